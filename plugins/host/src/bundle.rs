//! A container's OCI bundle, as the plugin service uses it at create: it
//! reads the spec there and writes back what the plugins decided (the
//! edited spec, and the [`DECISION_FILE`] record), so the spec never
//! crosses the service's socket.

use std::path::Path;

use crate::protocol::{DecisionRecord, Note, DECISION_FILE, SPEC_FILE};

/// The bundle's spec text, or why it cannot be read.
pub fn read_spec(bundle: &Path) -> Result<Vec<u8>, String> {
    let path = bundle.join(SPEC_FILE);
    std::fs::read(&path).map_err(|e| {
        format!(
            "cannot read {}: {e}; is {} an OCI bundle directory?",
            path.display(),
            bundle.display()
        )
    })
}

/// Writes the spec the plugins' edits produced over the bundle's.
pub fn write_spec(bundle: &Path, spec_json: &[u8]) -> Result<(), String> {
    let path = bundle.join(SPEC_FILE);
    rewrite(&path, spec_json).map_err(|e| format!("writing the edited {}: {e}", path.display()))
}

/// Records the edits and audit would-denies in the bundle, when there are
/// any.
pub fn write_decision(bundle: &Path, edits: &[Note], audit_denials: &[Note]) -> Result<(), String> {
    if edits.is_empty() && audit_denials.is_empty() {
        return Ok(());
    }
    let path = bundle.join(DECISION_FILE);
    let json = serde_json::to_vec_pretty(&DecisionRecord {
        edits,
        audit_denials,
    })
    .expect("the record serializes");
    // In place: under huskd the file comes empty with the spare shim's
    // bundle (no new inode in the create).
    rewrite(&path, &json).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Rewrites `path` in place with `bytes` (creating it if missing):
/// overwritten from the start, then cut to their length. Not a new file
/// renamed over it: ext4's `auto_da_alloc` starts writing back a file
/// renamed over another (or truncated to zero), which cost 0.2-0.9 ms of
/// every create with edits on this project's machine, where this costs
/// ~20 µs. Not atomic, and no need: until the shim's Create goes on,
/// nothing else reads the file, and after a crash it means nothing (the
/// container does not exist yet).
fn rewrite(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.write_all(bytes)?;
    f.set_len(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn rewrite_fills_an_existing_file_in_place_or_makes_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DECISION_FILE);
        rewrite(&path, b"made when missing").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"made when missing");
        let inode = std::fs::metadata(&path).unwrap().ino();
        rewrite(&path, b"short").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"short",
            "cut to the new length"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().ino(),
            inode,
            "the same file, not a new one"
        );
    }

    #[test]
    fn a_decision_without_notes_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write_decision(dir.path(), &[], &[]).unwrap();
        assert!(!dir.path().join(DECISION_FILE).exists());
        let edit = Note {
            plugin: "p".into(),
            note: "drop capability CAP_NET_RAW".into(),
        };
        write_decision(dir.path(), std::slice::from_ref(&edit), &[]).unwrap();
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(DECISION_FILE)).unwrap())
                .unwrap();
        assert_eq!(record["edits"][0]["note"], "drop capability CAP_NET_RAW");
        assert_eq!(record["audit_denials"], serde_json::json!([]));
    }

    #[test]
    fn a_missing_spec_names_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_spec(&dir.path().join("nope")).unwrap_err();
        assert!(e.contains("nope/config.json"), "{e}");
        assert!(e.contains("OCI bundle directory"), "{e}");
    }
}
