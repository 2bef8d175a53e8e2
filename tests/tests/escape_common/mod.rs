//! The escape catalogue, shared by `tests/tests/escape.rs` (one test per
//! vector) and `tests/benches/hardened_start.rs`'s table mode.
//!
//! Every vector runs as root inside a busybox container started by a real
//! containerd 1.6 (`ctr run --rm --runtime R`), once per runtime: husk's
//! hardened shim, husk's native shim and Debian's runc shim with default
//! settings. Most attempts are made by `probe` (probe.c, built static here
//! and added to the image), which prints `RESULT: ESCAPED ...` when the
//! attack worked and `RESULT: BLOCKED ...` when it did not; shell vectors
//! print the same. Nothing a successful attempt does changes the host: keys,
//! maps, sockets and traces are released at once, sysctls are rewritten
//! with their own value, no byte is written through a runtime binary.
#![allow(dead_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use husk_tests::runtime_bin::profile_dir_of;
use husk_tests::{command, Containerd, ContainerdOptions, ImageBuilder};

pub const IMAGE: &str = "husk.test/escape:latest";
pub const PROBE_SOURCE: &str = include_str!("probe.c");

/// How long one vector may take.
pub const VECTOR_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Hardened,
    Native,
    Runc,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Hardened, Target::Native, Target::Runc];

    pub fn runtime(self) -> &'static str {
        match self {
            Target::Hardened => "io.containerd.husk-hardened.v2",
            Target::Native => "io.containerd.husk.v2",
            Target::Runc => "io.containerd.runc.v2",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Hardened => "husk hardened",
            Target::Native => "husk native",
            Target::Runc => "runc (Debian, defaults)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Blocked(String),
    Escaped(String),
    /// Neither: the container did not run the attempt (a broken test or
    /// runtime, never counted as blocked).
    Error(String),
}

impl Outcome {
    pub fn is_blocked(&self) -> bool {
        matches!(self, Outcome::Blocked(_))
    }

    pub fn cell(&self) -> &'static str {
        match self {
            Outcome::Blocked(_) => "blocked",
            Outcome::Escaped(_) => "ESCAPED",
            Outcome::Error(_) => "error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Blocked(s) => write!(f, "blocked: {s}"),
            Outcome::Escaped(s) => write!(f, "ESCAPED: {s}"),
            Outcome::Error(s) => write!(f, "error: {s}"),
        }
    }
}

/// A private containerd with husk's shims on its PATH and the escape image
/// (busybox, /probe, a setuid-root copy /probe-suid) imported.
pub struct Env {
    pub ctd: Containerd,
    pub tmp: tempfile::TempDir,
}

/// `target/<profile>` with the shim binaries, or a panic saying to build.
pub fn shim_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = profile_dir_of(&exe);
    for bin in [
        "containerd-shim-husk-v2",
        "containerd-shim-husk-hardened-v2",
    ] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} not found in {}: build it first (`cargo build --workspace`)",
            dir.display()
        );
    }
    dir
}

/// Builds probe.c statically into `dir/probe`.
pub fn build_probe(dir: &Path) -> PathBuf {
    let src = dir.join("probe.c");
    std::fs::write(&src, PROBE_SOURCE).expect("write probe.c");
    let out = dir.join("probe");
    let cc = husk_tests::require_command("gcc");
    command::output_ok(
        Command::new(cc)
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src),
    );
    out
}

impl Env {
    pub fn start() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("husk-escape-")
            .tempdir()
            .unwrap();
        let layer = tmp.path().join("layer");
        std::fs::create_dir_all(&layer).unwrap();
        let probe = build_probe(tmp.path());
        std::fs::copy(&probe, layer.join("probe")).unwrap();
        std::fs::copy(&probe, layer.join("probe-suid")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(layer.join("probe"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(
            layer.join("probe-suid"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let tar = tmp.path().join("escape.tar");
        ImageBuilder::busybox().layer(&layer).write_tar(&tar);
        let ctd = Containerd::start_with(ContainerdOptions {
            path_prepend: vec![shim_dir()],
            ..Default::default()
        });
        ctd.import_image(&tar, "husk.test/escape");
        Env { ctd, tmp }
    }

    /// `ctr run --rm --runtime R [extra] IMAGE ID cmd...`, with a time limit.
    pub fn run(&self, target: Target, id: &str, extra: &[&str], cmd: &[&str]) -> Output {
        let mut c = self.ctd.ctr_cmd();
        c.args(["run", "--rm", "--runtime", target.runtime()]);
        c.args(extra);
        c.args([IMAGE, id]);
        c.args(cmd);
        match command::try_output_timeout(&mut c, VECTOR_TIMEOUT) {
            Ok(out) => out,
            Err(e) => {
                let _ = self.ctd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                panic!("{e}")
            }
        }
    }

    /// Runs `cmd` and reads its verdict.
    pub fn attempt(&self, target: Target, id: &str, extra: &[&str], cmd: &[&str]) -> Outcome {
        classify(&self.run(target, id, extra, cmd))
    }

    /// A shell script as the container's command.
    pub fn script(&self, target: Target, id: &str, script: &str) -> Outcome {
        self.attempt(target, id, &[], &["/bin/sh", "-c", script])
    }
}

/// The verdict of a container's output: its `RESULT:` line, or an OOM kill
/// (SIGKILL: blocked), or an error.
pub fn classify(out: &Output) -> Outcome {
    let stdout = command::stdout_text(out);
    let stderr = command::stderr_text(out);
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("RESULT: ESCAPED ") {
            return Outcome::Escaped(rest.to_string());
        }
        if let Some(rest) = line.strip_prefix("RESULT: BLOCKED ") {
            return Outcome::Blocked(rest.to_string());
        }
    }
    if out.status.code() == Some(137) {
        return Outcome::Blocked(format!(
            "killed by SIGKILL (OOM) after: {}",
            stdout.lines().last().unwrap_or("no output")
        ));
    }
    Outcome::Error(format!(
        "no verdict ({}): stdout {stdout:?} stderr {stderr:?}",
        command::describe_status(out.status)
    ))
}

pub type VectorFn = fn(&Env, Target, &str) -> Outcome;

/// The catalogue: (name, attempt).
pub const VECTORS: &[(&str, VectorFn)] = &[
    ("mount a filesystem / remount / rw", mount),
    ("unshare -U -r / any new namespace", namespaces),
    ("ptrace a process", ptrace),
    ("load a kernel module", module),
    ("/proc/kcore, sysrq-trigger, /proc/sys/kernel", proc_files),
    ("mknod a device, then open it", mknod),
    ("raw socket (ICMP, AF_PACKET)", raw_socket),
    ("keyctl / add_key", keyctl),
    ("bpf", bpf),
    ("setuid binary escalation", setuid),
    ("see or signal host processes", host_processes),
    ("write the runtime binary via /proc/*/exe", runtime_exe),
    ("leaked host fd in /proc/self/fd", leaked_fds),
    ("host path through a symlinked mount", symlinked_mount),
    ("fork bomb past the pids limit", fork_bomb),
    ("allocate past the memory limit", memory),
];

pub fn mount(env: &Env, t: Target, id: &str) -> Outcome {
    env.script(
        t,
        id,
        r#"mkdir -p /tmp/m
if mount -t tmpfs none /tmp/m 2>/dev/null; then echo "RESULT: ESCAPED mount -t tmpfs"; exit 0; fi
if mount -t proc proc /tmp/m 2>/dev/null; then echo "RESULT: ESCAPED mount -t proc"; exit 0; fi
if mount -o remount,rw / 2>/dev/null; then echo "RESULT: ESCAPED mount -o remount,rw /"; exit 0; fi
if mount --bind /tmp /tmp/m 2>/dev/null; then echo "RESULT: ESCAPED mount --bind"; exit 0; fi
echo "RESULT: BLOCKED $(mount -t tmpfs none /tmp/m 2>&1 | head -1)""#,
    )
}

pub fn namespaces(env: &Env, t: Target, id: &str) -> Outcome {
    env.script(
        t,
        id,
        r#"if unshare -U -r true 2>/dev/null; then echo "RESULT: ESCAPED unshare -U -r"; exit 0; fi
exec /probe namespaces"#,
    )
}

pub fn ptrace(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "ptrace"])
}

pub fn module(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "module"])
}

pub fn proc_files(env: &Env, t: Target, id: &str) -> Outcome {
    env.script(
        t,
        id,
        r#"n=$(dd if=/proc/kcore bs=4096 count=1 2>/dev/null | wc -c)
if [ "$n" -gt 0 ]; then echo "RESULT: ESCAPED read $n bytes of /proc/kcore"; exit 0; fi
if (: > /proc/sysrq-trigger) 2>/dev/null; then echo "RESULT: ESCAPED opened /proc/sysrq-trigger for writing"; exit 0; fi
v=$(cat /proc/sys/kernel/core_pattern)
if (printf '%s\n' "$v" > /proc/sys/kernel/core_pattern) 2>/dev/null; then echo "RESULT: ESCAPED wrote /proc/sys/kernel/core_pattern"; exit 0; fi
echo "RESULT: BLOCKED kcore empty, sysrq-trigger and core_pattern not writable""#,
    )
}

pub fn mknod(env: &Env, t: Target, id: &str) -> Outcome {
    env.script(
        t,
        id,
        r#"if ! err=$(mknod /tmp/kmsg c 1 11 2>&1); then echo "RESULT: BLOCKED mknod: $err"; exit 1; fi
n=$(timeout 2 head -c 64 /tmp/kmsg 2>/dev/null | wc -c)
if [ "$n" -gt 0 ]; then echo "RESULT: ESCAPED read the host's kernel log through a new /dev/kmsg node"; exit 0; fi
echo "RESULT: BLOCKED mknod worked, open failed: $(head -c 1 /tmp/kmsg 2>&1 | head -1)""#,
    )
}

pub fn raw_socket(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "rawsock"])
}

pub fn keyctl(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "keyctl"])
}

pub fn bpf(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "bpf"])
}

pub fn setuid(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "as", "1000", "/probe-suid", "euid"])
}

pub fn host_processes(env: &Env, t: Target, id: &str) -> Outcome {
    let marker = format!("husk-escape-marker-{id}");
    let mut host = Command::new("/bin/sh")
        .args(["-c", &format!("sleep 300; : {marker}")])
        .spawn()
        .expect("spawn the host marker process");
    let out = env.attempt(t, id, &[], &["/probe", "hostproc", &marker]);
    let _ = host.kill();
    let _ = host.wait();
    out
}

fn sha256_of(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| husk_tests::image::sha256_digest(&b))
}

/// CVE-2019-5736: while the container hunts for a runtime binary to open
/// for writing, the host execs into it over and over (each exec puts a
/// runtime process in the container for a moment). The runtime binaries'
/// digests are compared too.
pub fn runtime_exe(env: &Env, t: Target, id: &str) -> Outcome {
    let dir = shim_dir();
    let binaries: Vec<PathBuf> = [
        dir.join("containerd-shim-husk-v2"),
        dir.join("containerd-shim-husk-hardened-v2"),
        dir.join("husk-runtime"),
        PathBuf::from("/usr/bin/runc"),
        PathBuf::from("/usr/bin/containerd-shim-runc-v2"),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect();
    let before: Vec<_> = binaries.iter().map(|p| sha256_of(p)).collect();
    let outcome = std::thread::scope(|s| {
        let running = s.spawn(|| env.attempt(t, id, &[], &["/probe", "exewrite", "6"]));
        std::thread::sleep(Duration::from_millis(1500));
        for i in 0..8 {
            let exec_id = format!("x{i}");
            let _ = env
                .ctd
                .ctr(&["task", "exec", "--exec-id", &exec_id, id, "/bin/true"]);
        }
        running.join().expect("the attempt thread")
    });
    let after: Vec<_> = binaries.iter().map(|p| sha256_of(p)).collect();
    if before != after {
        return Outcome::Escaped(format!("a runtime binary changed: {binaries:?}"));
    }
    outcome
}

pub fn leaked_fds(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "fds"])
}

/// A volume whose source is a symlink to the host's /etc.
pub fn symlinked_mount(env: &Env, t: Target, id: &str) -> Outcome {
    let dir = env.tmp.path().join(format!("vol-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("data");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:ro",
        link.display()
    );
    let out = env.run(
        t,
        id,
        &["--mount", &mount],
        &[
            "/bin/sh",
            "-c",
            r#"if grep -q '^root:' /data/passwd 2>/dev/null; then echo "RESULT: ESCAPED read the host's /etc/passwd"; exit 0; fi
echo "RESULT: BLOCKED /data is not the host's /etc""#,
        ],
    );
    match classify(&out) {
        Outcome::Error(_) if !out.status.success() => {
            let err = command::stderr_text(&out);
            if err.contains("symlink") {
                Outcome::Blocked(format!(
                    "refused: {}",
                    err.lines().last().unwrap_or_default().trim()
                ))
            } else {
                Outcome::Error(err)
            }
        }
        other => other,
    }
}

pub fn fork_bomb(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "forkbomb", "1100"])
}

pub fn memory(env: &Env, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "memhog", "1536"])
}

/// Prints the vector × runtime table.
pub fn print_table(rows: &[(&str, Vec<(Target, Outcome)>)]) {
    let header: Vec<&str> = rows
        .first()
        .map(|(_, r)| r.iter().map(|(t, _)| t.name()).collect())
        .unwrap_or_default();
    println!();
    println!("| vector | {} |", header.join(" | "));
    println!("| --- |{}", " --- |".repeat(header.len()));
    for (name, results) in rows {
        let cells: Vec<&str> = results.iter().map(|(_, o)| o.cell()).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    for (t_index, t) in header.iter().enumerate() {
        let blocked = rows
            .iter()
            .filter(|(_, r)| r.get(t_index).is_some_and(|(_, o)| o.is_blocked()))
            .count();
        println!("{t}: {blocked}/{} blocked", rows.len());
    }
    println!();
    for (name, results) in rows {
        for (t, o) in results {
            println!("  {name} on {}: {o}", t.name());
        }
    }
}
