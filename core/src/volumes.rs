//! Volumes: `-v` specs, bind mounts, and named volumes under
//! `<root>/volumes/<name>/_data` that outlive their containers.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{CoreError, IoContext, Result};

/// A parsed `-v SRC:DST[:ro|:rw]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub source: VolumeSource,
    /// Absolute path in the container.
    pub destination: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// An absolute host path, bind mounted.
    Host(PathBuf),
    /// A named volume.
    Named(String),
}

fn bad(spec: &str, why: &str) -> CoreError {
    CoreError::InvalidArgument(format!(
        "invalid volume spec {spec:?}: {why}; the form is SRC:DST[:ro|:rw], SRC an absolute \
         host path or a volume name, DST an absolute path in the container"
    ))
}

/// Parses a `-v` spec.
pub fn parse_spec(spec: &str) -> Result<VolumeSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, ro) = match parts.as_slice() {
        [s, d] => (*s, *d, false),
        [s, d, "ro"] => (*s, *d, true),
        [s, d, "rw"] => (*s, *d, false),
        [_, _, m] => return Err(bad(spec, &format!("unknown mode {m:?} (use ro or rw)"))),
        [_] => return Err(bad(spec, "no destination")),
        _ => return Err(bad(spec, "too many ':'")),
    };
    if src.is_empty() {
        return Err(bad(spec, "the source is empty"));
    }
    if !dst.starts_with('/') {
        return Err(bad(spec, "the destination is not an absolute path"));
    }
    if dst.split('/').any(|c| c == "..") {
        return Err(bad(spec, "the destination contains '..'"));
    }
    let source = if src.starts_with('/') {
        VolumeSource::Host(PathBuf::from(src))
    } else {
        validate_volume_name(src).map_err(|_| bad(spec, "the source is neither an absolute path nor a valid volume name ([A-Za-z0-9][A-Za-z0-9_.-]*)"))?;
        VolumeSource::Named(src.to_string())
    };
    Ok(VolumeSpec {
        source,
        destination: dst.to_string(),
        read_only: ro,
    })
}

pub fn validate_volume_name(name: &str) -> Result<()> {
    crate::state::check_name("volume", name)
}

/// A named volume, as `volume ls/inspect` show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub mountpoint: PathBuf,
    /// Containers using it.
    pub used_by: Vec<String>,
}

/// The named volumes under one directory.
#[derive(Clone, Debug)]
pub struct Volumes {
    dir: PathBuf,
}

impl Volumes {
    pub fn new(dir: impl Into<PathBuf>) -> Volumes {
        Volumes { dir: dir.into() }
    }

    pub fn data_path(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    pub fn exists(&self, name: &str) -> bool {
        self.data_path(name).is_dir()
    }

    /// Creates volume `name` (fine if it exists); returns its data dir.
    pub fn create(&self, name: &str) -> Result<PathBuf> {
        validate_volume_name(name)?;
        let p = self.data_path(name);
        if !p.is_dir() {
            // Created under a temp name and renamed, so a crash leaves no
            // half volume.
            let tmp = self.dir.join(format!(".tmp-{name}"));
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(tmp.join("_data")).ctx(|| format!("creating {}", tmp.display()))?;
            fs::rename(&tmp, self.dir.join(name))
                .ctx(|| format!("creating volume {name} in {}", self.dir.display()))?;
            crate::images::index::fsync_dir(&self.dir)?;
        }
        Ok(p)
    }

    pub fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.dir).ctx(|| format!("listing {}", self.dir.display()))? {
            let e = e.ctx(|| format!("listing {}", self.dir.display()))?;
            let n = e.file_name().to_string_lossy().into_owned();
            if !n.starts_with('.') && e.path().join("_data").is_dir() {
                out.push(n);
            }
        }
        out.sort();
        Ok(out)
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        validate_volume_name(name)?;
        if !self.exists(name) {
            return Err(CoreError::NotFound(format!("no volume named {name:?}")));
        }
        let tmp = self.dir.join(format!(".rm-{name}"));
        fs::rename(self.dir.join(name), &tmp).ctx(|| format!("removing volume {name}"))?;
        fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", tmp.display()))
    }
}

/// Checks a host path for a bind mount exists.
pub fn check_host_path(p: &Path, spec: &str) -> Result<()> {
    if p.exists() {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "invalid volume spec {spec:?}: the host path {} does not exist",
            p.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            parse_spec("/a:/b:ro").unwrap(),
            VolumeSpec {
                source: VolumeSource::Host("/a".into()),
                destination: "/b".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_spec("data:/d").unwrap().source,
            VolumeSource::Named("data".into())
        );
        for bad in [
            "",
            "x",
            "/a:b",
            "/a:/b:rx",
            "a:b:c:d",
            ":/b",
            "../x:/b",
            "/a:/b/../c",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }
}
