//! `husk plugin new`: a new policy plugin project that builds out of the box.
//!
//! [`scaffold`] writes, into a new (or empty) directory, a policy that allows
//! every container and shows where to deny and where to mutate (each behind a
//! key of the plugin's config, so both paths are real code), the WIT contract
//! (`wit/`, the copy of husk's `wit/` built into this binary), a `build.sh`
//! that runs the same toolchain commands as `scripts/build-plugins.sh`, and a
//! README with the build, install and test commands.
//!
//! The templates are the files under `core/templates/plugin/`; the pinned
//! tool versions (wit-bindgen for Rust, componentize-qjs for JavaScript) are
//! read from the example plugins' manifests, so a new plugin and the examples
//! never drift apart.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{CoreError, IoContext, Result};

/// The languages a plugin can be started in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

impl Lang {
    pub const ALL: [Lang; 4] = [Lang::Rust, Lang::Python, Lang::Js, Lang::C];

    /// The name `--lang` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
        }
    }

    /// The file holding the policy, the one to edit.
    pub fn source_file(self) -> &'static str {
        match self {
            Lang::Rust => "src/lib.rs",
            Lang::Python => "app.py",
            Lang::Js => "policy.js",
            Lang::C => "policy.c",
        }
    }

    fn toolchain(self) -> &'static str {
        match self {
            Lang::Rust => "cargo for wasm32-wasip2 with wit-bindgen",
            Lang::Python => "componentize-py",
            Lang::Js => "componentize-qjs from npm",
            Lang::C => "wit-bindgen c, clang with wasi-libc, wasm-tools",
        }
    }

    /// The language's own templates: (path in the project, text).
    fn templates(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Lang::Rust => &[
                (
                    "Cargo.toml",
                    include_str!("../templates/plugin/rust/Cargo.toml.tmpl"),
                ),
                (
                    "src/lib.rs",
                    include_str!("../templates/plugin/rust/src/lib.rs"),
                ),
                (
                    ".gitignore",
                    include_str!("../templates/plugin/rust/gitignore"),
                ),
            ],
            Lang::Python => &[
                ("app.py", include_str!("../templates/plugin/python/app.py")),
                (
                    ".gitignore",
                    include_str!("../templates/plugin/python/gitignore"),
                ),
            ],
            Lang::Js => &[
                (
                    "package.json",
                    include_str!("../templates/plugin/js/package.json.tmpl"),
                ),
                (
                    "policy.js",
                    include_str!("../templates/plugin/js/policy.js"),
                ),
                (
                    ".gitignore",
                    include_str!("../templates/plugin/js/gitignore"),
                ),
            ],
            Lang::C => &[
                ("policy.c", include_str!("../templates/plugin/c/policy.c")),
                (
                    ".gitignore",
                    include_str!("../templates/plugin/c/gitignore"),
                ),
            ],
        }
    }

    /// The language's part of `build.sh`, between the shared head and tail.
    fn build_body(self) -> &'static str {
        match self {
            Lang::Rust => include_str!("../templates/plugin/rust/build.sh"),
            Lang::Python => include_str!("../templates/plugin/python/build.sh"),
            Lang::Js => include_str!("../templates/plugin/js/build.sh"),
            Lang::C => include_str!("../templates/plugin/c/build.sh"),
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lang {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Lang> {
        Lang::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| {
                CoreError::InvalidArgument(format!(
                    "unknown plugin language {s:?}; choose one of rust, python, js, c"
                ))
            })
    }
}

/// The WIT package `husk:plugin@0.1.0`, as built into this binary.
const WIT_FILES: [(&str, &str); 4] = [
    ("types.wit", include_str!("../../wit/types.wit")),
    ("host.wit", include_str!("../../wit/host.wit")),
    ("hooks.wit", include_str!("../../wit/hooks.wit")),
    ("worlds.wit", include_str!("../../wit/worlds.wit")),
];

const README: &str = include_str!("../templates/plugin/README.md");
const BUILD_HEAD: &str = include_str!("../templates/plugin/build-head.sh");
const BUILD_TAIL: &str = include_str!("../templates/plugin/build-tail.sh");

/// The manifests whose pins a new plugin copies.
const RUST_EXAMPLE_MANIFEST: &str = include_str!("../../examples/plugins/rust-policy/Cargo.toml");
const JS_EXAMPLE_PACKAGE: &str = include_str!("../../examples/plugins/js-policy/package.json");

/// The wit-bindgen version the Rust example pins (`0.46`).
pub fn wit_bindgen_version() -> Result<String> {
    RUST_EXAMPLE_MANIFEST
        .lines()
        .find(|l| l.trim_start().starts_with("wit-bindgen"))
        .and_then(|l| l.split_once("version = \""))
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(v, _)| v.to_owned())
        .ok_or_else(|| {
            CoreError::Internal(
                "examples/plugins/rust-policy/Cargo.toml pins no wit-bindgen version".into(),
            )
        })
}

/// The componentize-qjs version the JavaScript example pins.
pub fn componentize_qjs_version() -> Result<String> {
    serde_json::from_str::<serde_json::Value>(JS_EXAMPLE_PACKAGE)
        .ok()
        .and_then(|v| {
            v["devDependencies"]["componentize-qjs"]
                .as_str()
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            CoreError::Internal(
                "examples/plugins/js-policy/package.json pins no componentize-qjs version".into(),
            )
        })
}

/// Checks a new plugin's name: it names the project, its `NAME.wasm`, the
/// plugin in `plugins.toml`, the Rust crate and the npm package, so it is
/// 1 to 64 of lowercase ASCII letters, digits, `-` and `_`, starting with a
/// letter.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(CoreError::InvalidArgument(format!(
            "bad plugin name {name:?}: use 1 to 64 lowercase letters, digits, - and _, \
             starting with a letter (e.g. no-debug-env)"
        )))
    }
}

/// What [`scaffold`] wrote, for the CLI to print (its `Display` is the
/// message: the files, then the build, install and test commands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaffoldReport {
    pub lang: Lang,
    pub name: String,
    /// The project directory, as given.
    pub dir: PathBuf,
    /// The files written, relative to `dir`, sorted.
    pub files: Vec<PathBuf>,
    /// The shell command that builds the plugin (`DIR/build.sh`).
    pub build_command: String,
    /// What the build produces: `DIR/NAME.wasm`.
    pub output: PathBuf,
}

impl fmt::Display for ScaffoldReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "created {} policy plugin {} in {}:",
            self.lang.title(),
            self.name,
            self.dir.display()
        )?;
        for file in &self.files {
            writeln!(f, "  {}", file.display())?;
        }
        writeln!(
            f,
            "edit {}, then:",
            self.dir.join(self.lang.source_file()).display()
        )?;
        writeln!(f, "  {}", self.build_command)?;
        writeln!(
            f,
            "  husk plugin install {}",
            shell_quote(&self.output.display().to_string())
        )?;
        write!(f, "  husk plugin test {} --image IMAGE", self.name)
    }
}

/// Writes a new `lang` policy plugin called `name` into `dir`, which must not
/// exist or be empty (its parents are created). Everything is written into a
/// temporary sibling directory first and renamed into place, so a failure
/// leaves nothing behind.
pub fn scaffold(lang: Lang, name: &str, dir: &Path) -> Result<ScaffoldReport> {
    validate_name(name)?;
    let files = project_files(lang, name)?;
    let target = check_target(dir)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).ctx(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .tempdir_in(&parent)
        .ctx(|| format!("creating a temporary directory in {}", parent.display()))?;
    for (path, text, executable) in &files {
        let dest = tmp.path().join(path);
        if let Some(p) = dest.parent() {
            fs::create_dir_all(p).ctx(|| format!("creating {}", p.display()))?;
        }
        fs::write(&dest, text).ctx(|| format!("writing {}", dest.display()))?;
        if *executable {
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))
                .ctx(|| format!("making {} executable", dest.display()))?;
        }
    }
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))
        .ctx(|| format!("setting the mode of {}", tmp.path().display()))?;
    // rename(2) replaces an empty directory; a non-empty one (created since
    // the check) makes it fail, and the temporary directory is removed.
    fs::rename(tmp.path(), &target).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTEMPTY) | Some(libc::EEXIST) => not_empty(dir),
        _ => CoreError::io(format!("moving the new plugin into {}", dir.display()), e),
    })?;
    // Now at `target`: nothing left for the TempDir to remove.
    let _ = tmp.keep();
    tracing::info!(lang = %lang, name, dir = %dir.display(), "scaffolded a plugin");

    let mut written: Vec<PathBuf> = files.iter().map(|(p, _, _)| PathBuf::from(p)).collect();
    written.sort();
    Ok(ScaffoldReport {
        lang,
        name: name.to_owned(),
        dir: dir.to_path_buf(),
        files: written,
        build_command: shell_quote(&dir.join("build.sh").display().to_string()),
        output: dir.join(format!("{name}.wasm")),
    })
}

/// The directory to create: `dir`, or what it links to. Refuses a file and a
/// non-empty directory.
fn check_target(dir: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir.to_path_buf()),
        Err(e) => Err(CoreError::io(format!("checking {}", dir.display()), e)),
        Ok(_) => {
            let real = fs::canonicalize(dir).ctx(|| format!("resolving {}", dir.display()))?;
            if !real.is_dir() {
                return Err(CoreError::Conflict(format!(
                    "{} exists and is not a directory; choose another directory for the plugin",
                    dir.display()
                )));
            }
            let mut entries = fs::read_dir(&real).ctx(|| format!("reading {}", real.display()))?;
            if entries.next().is_some() {
                return Err(not_empty(dir));
            }
            Ok(real)
        }
    }
}

fn not_empty(dir: &Path) -> CoreError {
    CoreError::Conflict(format!(
        "{} already exists and is not empty; choose a new directory (or empty this one)",
        dir.display()
    ))
}

/// Every file of a new project: (path, text, executable).
fn project_files(lang: Lang, name: &str) -> Result<Vec<(String, String, bool)>> {
    let krate = name.replace('-', "_");
    let wit_bindgen = wit_bindgen_version()?;
    let qjs = componentize_qjs_version()?;
    let vars: [(&str, &str); 7] = [
        ("name", name),
        ("crate", &krate),
        ("lang", lang.title()),
        ("source", lang.source_file()),
        ("toolchain", lang.toolchain()),
        ("wit_bindgen_version", &wit_bindgen),
        ("componentize_qjs_version", &qjs),
    ];
    let mut files = vec![
        ("README.md".to_owned(), render(README, &vars), false),
        (
            "build.sh".to_owned(),
            render(&[BUILD_HEAD, lang.build_body(), BUILD_TAIL].concat(), &vars),
            true,
        ),
    ];
    files.extend(
        lang.templates()
            .iter()
            .map(|(path, text)| ((*path).to_owned(), render(text, &vars), false)),
    );
    files.extend(
        WIT_FILES
            .iter()
            .map(|(file, text)| (format!("wit/{file}"), (*text).to_owned(), false)),
    );
    Ok(files)
}

/// Replaces each `{{key}}` of `text`.
fn render(text: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(text.to_owned(), |t, (key, value)| {
        t.replace(&format!("{{{{{key}}}}}"), value)
    })
}

/// `s`, quoted for a POSIX shell if it needs to be.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    #[test]
    fn every_language_gets_a_complete_project() {
        let tmp = tempfile::tempdir().unwrap();
        for lang in Lang::ALL {
            let dir = tmp.path().join(lang.as_str());
            let report = scaffold(lang, "my-policy", &dir).unwrap();
            assert_eq!(report.lang, lang);
            assert_eq!(report.output, dir.join("my-policy.wasm"));
            assert_eq!(report.build_command, format!("{}/build.sh", dir.display()));
            for f in [
                "README.md",
                "build.sh",
                lang.source_file(),
                ".gitignore",
                "wit/types.wit",
                "wit/host.wit",
                "wit/hooks.wit",
                "wit/worlds.wit",
            ] {
                assert!(
                    report.files.contains(&PathBuf::from(f)),
                    "{lang}: {f} not reported"
                );
            }
            // Exactly the reported files exist, and none keeps a placeholder.
            let mut on_disk = Vec::new();
            let mut stack = vec![dir.clone()];
            while let Some(d) = stack.pop() {
                for e in fs::read_dir(&d).unwrap() {
                    let p = e.unwrap().path();
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        let text = fs::read_to_string(&p).unwrap();
                        assert!(!text.contains("{{"), "{}: {text}", p.display());
                        on_disk.push(p.strip_prefix(&dir).unwrap().to_path_buf());
                    }
                }
            }
            on_disk.sort();
            assert_eq!(on_disk, report.files, "{lang}");

            let build = read(&dir, "build.sh");
            assert!(build.starts_with("#!/usr/bin/env bash\n"), "{build}");
            assert!(build.contains("OUT=my-policy.wasm"), "{build}");
            assert!(build.contains("scripts/install-deps.sh"), "{build}");
            let mode = fs::metadata(dir.join("build.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "build.sh is executable");
            let readme = read(&dir, "README.md");
            for cmd in [
                "./build.sh",
                "husk plugin install ./my-policy.wasm",
                "husk plugin test my-policy --image",
            ] {
                assert!(readme.contains(cmd), "{lang}: README lacks {cmd}");
            }
            let source = read(&dir, lang.source_file());
            for key in ["deny-env", "add-annotation"] {
                assert!(source.contains(key), "{lang}: {key} not in the policy");
            }
            assert!(report
                .to_string()
                .contains("husk plugin test my-policy --image"));
        }
    }

    #[test]
    fn the_wit_is_the_repositorys() {
        let repo_wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut repo: Vec<String> = fs::read_dir(&repo_wit)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wit"))
            .collect();
        repo.sort();
        let mut ours: Vec<String> = WIT_FILES.iter().map(|(n, _)| n.to_string()).collect();
        ours.sort();
        assert_eq!(ours, repo, "WIT_FILES must list every wit/*.wit");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        scaffold(Lang::C, "p", &dir).unwrap();
        for n in &repo {
            assert_eq!(
                read(&dir, &format!("wit/{n}")),
                fs::read_to_string(repo_wit.join(n)).unwrap()
            );
        }
    }

    #[test]
    fn pins_match_the_examples() {
        assert_eq!(wit_bindgen_version().unwrap(), "0.46");
        let qjs = componentize_qjs_version().unwrap();
        assert!(qjs.chars().next().unwrap().is_ascii_digit(), "{qjs}");

        let tmp = tempfile::tempdir().unwrap();
        let rust = tmp.path().join("r");
        scaffold(Lang::Rust, "my-policy", &rust).unwrap();
        let cargo = read(&rust, "Cargo.toml");
        assert!(cargo.contains("name = \"my-policy\""), "{cargo}");
        assert!(cargo.contains("name = \"my_policy\""), "{cargo}");
        assert!(
            cargo.contains("wit-bindgen = { version = \"0.46\""),
            "{cargo}"
        );
        assert!(
            cargo.contains("\n[workspace]\n"),
            "its own workspace: {cargo}"
        );
        assert!(read(&rust, "build.sh").contains("release/my_policy.wasm"));

        let js = tmp.path().join("j");
        scaffold(Lang::Js, "my-policy", &js).unwrap();
        let package: serde_json::Value = serde_json::from_str(&read(&js, "package.json")).unwrap();
        assert_eq!(package["name"], "my-policy");
        assert_eq!(package["devDependencies"]["componentize-qjs"], qjs.as_str());
        assert!(read(&js, "build.sh").contains("npm install"));
    }

    #[test]
    fn languages_parse_and_unknown_ones_are_refused() {
        for lang in Lang::ALL {
            assert_eq!(lang.as_str().parse::<Lang>().unwrap(), lang);
        }
        let err = "go".parse::<Lang>().unwrap_err();
        assert_eq!(err.kind(), "invalid_argument");
        assert_eq!(
            err.to_string(),
            "unknown plugin language \"go\"; choose one of rust, python, js, c"
        );
    }

    #[test]
    fn bad_names_are_refused_and_nothing_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let long = "a".repeat(65);
        for name in [
            "",
            "My-Policy",
            "1policy",
            "-x",
            "a b",
            "../x",
            "a.b",
            &long,
        ] {
            let err = scaffold(Lang::Rust, name, &tmp.path().join("p")).unwrap_err();
            assert_eq!(err.kind(), "invalid_argument", "{name:?}");
            assert!(err.to_string().contains("bad plugin name"), "{err}");
        }
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        validate_name(&"a".repeat(64)).unwrap();
        validate_name("a_1-b").unwrap();
    }

    #[test]
    fn a_non_empty_directory_or_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("taken");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("mine.txt"), "keep me").unwrap();
        let err = scaffold(Lang::Python, "p", &dir).unwrap_err();
        assert_eq!(err.kind(), "conflict");
        assert!(
            err.to_string().contains("already exists and is not empty"),
            "{err}"
        );
        assert_eq!(read(&dir, "mine.txt"), "keep me");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);

        let file = tmp.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = scaffold(Lang::Python, "p", &file).unwrap_err();
        assert_eq!(err.kind(), "conflict");
        assert!(err.to_string().contains("is not a directory"), "{err}");
        // No temporary directory left behind.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn an_empty_directory_and_missing_parents_are_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        scaffold(Lang::Js, "p", &empty).unwrap();
        assert!(empty.join("policy.js").is_file());

        let deep = tmp.path().join("a/b/c");
        scaffold(Lang::C, "p", &deep).unwrap();
        assert!(deep.join("policy.c").is_file());
        let mode = fs::metadata(&deep).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn the_report_quotes_paths_for_the_shell() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("it's here");
        let report = scaffold(Lang::C, "p", &dir).unwrap();
        assert_eq!(
            report.build_command,
            format!("'{}/it'\\''s here/build.sh'", tmp.path().display())
        );
        assert_eq!(shell_quote("a/b.sh"), "a/b.sh");
    }
}
