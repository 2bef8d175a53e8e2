//! The escape catalogue, shared by `tests/tests/escape.rs` (one test per
//! vector, through containerd), `tests/tests/escape_huskd.rs` (the same
//! vectors through huskd) and `tests/benches/hardened_start.rs`'s table
//! mode.
//!
//! Every vector runs as root inside a busybox container started by a
//! [`Runner`]: a real containerd 1.6 ([`Env`], `ctr run --rm --runtime R`)
//! or a private huskd ([`HuskdEnv`], `husk run --rm --runtime R`), once per
//! runtime: husk's hardened shim, husk's native shim and Debian's runc shim
//! with default settings. Most attempts are made by `probe` (probe.c, built static here
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

use husk_tests::huskd::{Huskd, HuskdOptions};
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

    /// The runtime's name in huskd (`husk run --runtime NAME`).
    pub fn huskd_name(self) -> &'static str {
        match self {
            Target::Hardened => "hardened",
            Target::Native => "native",
            Target::Runc => "runc",
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

/// Writes the escape image (busybox, /probe, a setuid-root copy
/// /probe-suid, mode 4755 owned by uid 0 in the layer) as an OCI archive
/// under `dir`; returns its path.
pub fn build_image(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let layer = dir.join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    let probe = build_probe(dir);
    let (plain, suid) = (layer.join("probe"), layer.join("probe-suid"));
    std::fs::copy(&probe, &plain).unwrap();
    std::fs::copy(&probe, &suid).unwrap();
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Owner first: chown clears the setuid bit.
    std::os::unix::fs::chown(&suid, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let tar = dir.join("escape.tar");
    ImageBuilder::busybox().layer(&layer).write_tar(&tar);
    tar
}

/// What a vector may add to its container.
#[derive(Debug, Clone, Copy)]
pub enum Extra<'a> {
    /// `KEY=VALUE` in the environment.
    Env(&'a str),
    /// A read-only bind mount of a host path.
    BindRo { src: &'a Path, dst: &'a str },
    /// Join this network namespace (a path); containerd only: huskd gives
    /// every container its own.
    NetnsPath(&'a str),
}

/// Starts containers of the escape image on a runtime: through
/// containerd ([`Env`]) or through huskd ([`HuskdEnv`]).
pub trait Runner: Sync {
    /// Runs `cmd` as root in a new container `id` of [`IMAGE`] on `target`,
    /// removed when it exits, with a time limit.
    fn run(&self, target: Target, id: &str, extra: &[Extra], cmd: &[&str]) -> Output;

    /// Runs `cmd` in the running container `id` (an `exec`; the result is
    /// not needed).
    fn exec(&self, id: &str, n: usize, cmd: &[&str]);

    /// A host directory for the vectors' own files.
    fn scratch(&self) -> &Path;

    /// Runs `cmd` and reads its verdict.
    fn attempt(&self, target: Target, id: &str, extra: &[Extra], cmd: &[&str]) -> Outcome {
        classify(&self.run(target, id, extra, cmd))
    }

    /// A shell script as the container's command.
    fn script(&self, target: Target, id: &str, script: &str) -> Outcome {
        self.attempt(target, id, &[], &["/bin/sh", "-c", script])
    }
}

impl Env {
    pub fn start() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("husk-escape-")
            .tempdir()
            .unwrap();
        let tar = build_image(tmp.path());
        let ctd = Containerd::start_with(ContainerdOptions {
            path_prepend: vec![shim_dir()],
            ..Default::default()
        });
        ctd.import_image(&tar, "husk.test/escape");
        Env { ctd, tmp }
    }
}

impl Runner for Env {
    /// `ctr run --rm --runtime R [extra] IMAGE ID cmd...`, with a time limit.
    fn run(&self, target: Target, id: &str, extra: &[Extra], cmd: &[&str]) -> Output {
        let mut c = self.ctd.ctr_cmd();
        c.args(["run", "--rm", "--runtime", target.runtime()]);
        for e in extra {
            match e {
                Extra::Env(kv) => c.args(["--env", kv]),
                Extra::BindRo { src, dst } => c.arg("--mount").arg(format!(
                    "type=bind,src={},dst={dst},options=rbind:ro",
                    src.display()
                )),
                Extra::NetnsPath(p) => c.arg("--with-ns").arg(format!("network:{p}")),
            };
        }
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

    fn exec(&self, id: &str, n: usize, cmd: &[&str]) {
        let exec_id = format!("x{n}");
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, id];
        args.extend_from_slice(cmd);
        let _ = self.ctd.ctr(&args);
    }

    fn scratch(&self) -> &Path {
        self.tmp.path()
    }
}

/// A private huskd with husk's shims beside it and the escape image
/// imported as [`IMAGE`].
pub struct HuskdEnv {
    pub d: Huskd,
}

impl HuskdEnv {
    pub fn start() -> HuskdEnv {
        Self::start_with(HuskdOptions::default())
    }

    pub fn start_with(opts: HuskdOptions) -> HuskdEnv {
        let d = Huskd::start_with_options(opts);
        let tar = build_image(d.tmp.path());
        d.husk_ok(&["image", "import", "--name", IMAGE, tar.to_str().unwrap()]);
        HuskdEnv { d }
    }

    /// `husk run --rm --name ID --runtime R [extra] IMAGE cmd...` without
    /// a time limit's kill.
    pub fn run_cmd(&self, target: Target, id: &str, extra: &[Extra], cmd: &[&str]) -> Command {
        let mut c = self.d.husk_cmd(&["run", "--rm", "--name", id]);
        c.args(["--runtime", target.huskd_name()]);
        for e in extra {
            match e {
                Extra::Env(kv) => c.args(["--env", kv]),
                Extra::BindRo { src, dst } => {
                    c.arg("--volume").arg(format!("{}:{dst}:ro", src.display()))
                }
                Extra::NetnsPath(_) => panic!(
                    "huskd gives every container its own network namespace: \
                     it cannot join one by path (use the containerd runner)"
                ),
            };
        }
        c.arg(IMAGE).args(cmd);
        c
    }
}

impl Runner for HuskdEnv {
    fn run(&self, target: Target, id: &str, extra: &[Extra], cmd: &[&str]) -> Output {
        let mut c = self.run_cmd(target, id, extra, cmd);
        match command::try_output_timeout(&mut c, VECTOR_TIMEOUT) {
            Ok(out) => out,
            Err(e) => {
                let _ = self.d.husk(&["rm", "-f", id]);
                panic!("{e}\nhuskd log:\n{}", self.d.log())
            }
        }
    }

    fn exec(&self, id: &str, _n: usize, cmd: &[&str]) {
        let mut args = vec!["exec", id];
        args.extend_from_slice(cmd);
        let _ = self.d.husk(&args);
    }

    fn scratch(&self) -> &Path {
        self.d.tmp.path()
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

pub type VectorFn = fn(&dyn Runner, Target, &str) -> Outcome;

/// A vector's name in [`VECTORS`].
pub fn vector_name(f: VectorFn) -> &'static str {
    VECTORS
        .iter()
        .find(|(_, v)| std::ptr::fn_addr_eq(*v, f))
        .map(|(n, _)| *n)
        .expect("every vector is in VECTORS")
}

/// One `#[test]` per vector of the catalogue, each calling
/// `$run(name, vector)` (which runs it and asserts). For a file that
/// includes this module as `#[macro_use] mod escape;`.
#[allow(unused_macros)]
macro_rules! vector_tests {
    ($run:path) => {
        vector_tests!($run;
            escape_mount => mount,
            escape_new_namespace => namespaces,
            escape_ptrace => ptrace,
            escape_kernel_module => module,
            escape_proc_kcore_sysrq_sysctl => proc_files,
            escape_mknod_device => mknod,
            escape_raw_socket => raw_socket,
            escape_keyctl => keyctl,
            escape_bpf => bpf,
            escape_setuid_binary => setuid,
            escape_host_processes => host_processes,
            escape_runtime_binary_via_proc_exe => runtime_exe,
            escape_leaked_host_fd => leaked_fds,
            escape_symlinked_mount => symlinked_mount,
            escape_fork_bomb => fork_bomb,
            escape_memory_limit => memory,
        );
    };
    ($run:path; $($test:ident => $f:ident),* $(,)?) => {$(
        #[test]
        fn $test() {
            husk_tests::require_root!();
            $run(escape::vector_name(escape::$f), escape::$f);
        }
    )*};
}

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

pub fn mount(env: &dyn Runner, t: Target, id: &str) -> Outcome {
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

pub fn namespaces(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.script(
        t,
        id,
        r#"if unshare -U -r true 2>/dev/null; then echo "RESULT: ESCAPED unshare -U -r"; exit 0; fi
exec /probe namespaces"#,
    )
}

pub fn ptrace(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "ptrace"])
}

pub fn module(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "module"])
}

pub fn proc_files(env: &dyn Runner, t: Target, id: &str) -> Outcome {
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

pub fn mknod(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.script(
        t,
        id,
        r#"if ! err=$(mknod /tmp/kmsg c 1 11 2>&1); then echo "RESULT: BLOCKED mknod: $err"; exit 1; fi
n=$(timeout 2 head -c 64 /tmp/kmsg 2>/dev/null | wc -c)
if [ "$n" -gt 0 ]; then echo "RESULT: ESCAPED read the host's kernel log through a new /dev/kmsg node"; exit 0; fi
echo "RESULT: BLOCKED mknod worked, open failed: $(head -c 1 /tmp/kmsg 2>&1 | head -1)""#,
    )
}

pub fn raw_socket(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "rawsock"])
}

pub fn keyctl(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "keyctl"])
}

pub fn bpf(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "bpf"])
}

pub fn setuid(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "as", "1000", "/probe-suid", "euid"])
}

pub fn host_processes(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    let marker = format!("husk-escape-marker-{id}");
    // One process (no shell whose `sleep` child would outlive the kill
    // and hold the test's output open), named by the marker.
    use std::os::unix::process::CommandExt as _;
    let mut host = Command::new("sleep")
        .arg0(&marker)
        .arg("300")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
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
pub fn runtime_exe(env: &dyn Runner, t: Target, id: &str) -> Outcome {
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
            env.exec(id, i, &["/bin/true"]);
        }
        running.join().expect("the attempt thread")
    });
    let after: Vec<_> = binaries.iter().map(|p| sha256_of(p)).collect();
    if before != after {
        return Outcome::Escaped(format!("a runtime binary changed: {binaries:?}"));
    }
    outcome
}

pub fn leaked_fds(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "fds"])
}

/// A volume whose source is a symlink to the host's /etc.
pub fn symlinked_mount(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    let dir = env.scratch().join(format!("vol-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("data");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let out = env.run(
        t,
        id,
        &[Extra::BindRo {
            src: &link,
            dst: "/data",
        }],
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

pub fn fork_bomb(env: &dyn Runner, t: Target, id: &str) -> Outcome {
    env.attempt(t, id, &[], &["/probe", "forkbomb", "1100"])
}

pub fn memory(env: &dyn Runner, t: Target, id: &str) -> Outcome {
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

/// Ordinary workloads on `target`: a busybox shell script (pipes,
/// subshells, /tmp, environment) and a compiled C program (probe.c,
/// built static by the system compiler) run and print what they should.
pub fn runs_a_script_and_a_c_program(env: &dyn Runner, target: Target) {
    let out = env.run(
        target,
        &husk_tests::unique_id("husk-ord"),
        &[Extra::Env("GREETING=hi")],
        &[
            "/bin/sh",
            "-c",
            "set -e; echo $GREETING > /tmp/f; cat /tmp/f | tr a-z A-Z; \
             for i in 1 2 3; do echo $i; done | wc -l; ls / >/dev/null; \
             echo to-stdout > /dev/stdout; id -u",
        ],
    );
    assert!(out.status.success(), "{}", command::format_output(&out));
    assert_eq!(command::stdout_text(&out), "HI\n3\nto-stdout\n0\n");
    let out = env.run(
        target,
        &husk_tests::unique_id("husk-ord"),
        &[],
        &["/probe", "hello"],
    );
    assert!(out.status.success(), "{}", command::format_output(&out));
    assert_eq!(
        command::stdout_text(&out),
        "hello from a compiled C program, uid 0\n"
    );
}
