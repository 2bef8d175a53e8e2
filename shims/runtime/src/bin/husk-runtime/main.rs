//! `husk-runtime`: an OCI runtime CLI compatible with runc's common subset,
//! so containerd's runc shim can use it as its runtime binary.

mod logging;
mod supervise;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk_runtime::container::{CreateOptions, ExecOptions, Runtime, DEFAULT_ROOT};
use husk_runtime::error::{Error, Result};
use husk_runtime::state::Status;
use husk_runtime::{sealed_exe, signals, spec};
use oci_spec::runtime::{LinuxResources, Process};

#[derive(Parser)]
#[command(
    name = "husk-runtime",
    version,
    about = "husk's OCI runtime: containers straight from namespaces, cgroups and pivot_root"
)]
struct Cli {
    /// Directory for container state (tmpfs recommended).
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Use systemd for cgroups (not supported: husk manages cgroupfs directly).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// runc compatibility: `true`/`false`/`auto` globally; with `spec`, write a rootless spec.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true")]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container from a bundle; its process waits for `start`.
    Create {
        #[command(flatten)]
        create: CreateArgs,
        id: String,
    },
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's OCI state as JSON.
    State { id: String },
    /// Send a signal (default TERM) to a container's init, or --all its processes.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a container (with --force even a running one).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, and wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
        /// Keep the container's state after it exits.
        #[arg(long)]
        keep: bool,
        /// Accepted for runc compatibility.
        #[arg(long = "no-subreaper")]
        no_subreaper: bool,
        id: String,
    },
    /// Run a new process inside a running container.
    Exec(Box<ExecArgs>),
    /// List the processes of a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments for ps(1) in table format (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// List containers.
    #[command(alias = "ls")]
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Write a default config.json to the bundle.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
    },
    /// Print what this runtime supports, as JSON.
    Features,
    /// Print the effective hardened profile (containerd-shim-husk-hardened-v2's),
    /// as TOML: --profile FILE, else $HUSK_HARDENED_PROFILE, else
    /// /etc/husk/hardened.toml, else the defaults.
    HardenedProfile {
        #[arg(long)]
        profile: Option<PathBuf>,
    },
    /// Change a container's resource limits.
    Update(Box<UpdateArgs>),
    /// Print resource usage and OOM events.
    Events {
        /// Print stats once and exit.
        #[arg(long)]
        stats: bool,
        /// Interval between stats events, in seconds.
        #[arg(long, default_value = "5", value_parser = parse_seconds)]
        interval: f64,
        id: String,
    },
    #[command(name = "__husk_init", hide = true)]
    Init,
}

#[derive(clap::Args)]
struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted for runc compatibility: husk never creates a session keyring.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
}

#[derive(clap::Args)]
struct ExecArgs {
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(short, long)]
    env: Vec<String>,
    #[arg(short, long)]
    tty: bool,
    /// uid[:gid]
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// A process.json to run instead of COMMAND.
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Add a capability (e.g. CAP_NET_ADMIN).
    #[arg(short, long)]
    cap: Vec<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    #[arg(long = "process-label")]
    process_label: Option<String>,
    #[arg(long)]
    apparmor: Option<String>,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct UpdateArgs {
    /// LinuxResources JSON file, or - for stdin.
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long)]
    memory: Option<i64>,
    #[arg(long = "memory-swap")]
    memory_swap: Option<i64>,
    #[arg(long = "cpu-shares")]
    cpu_shares: Option<u64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    id: String,
}

fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))
}

fn main() -> ExitCode {
    // The init path runs inside the container's namespaces: skip argument
    // parsing and logging setup, it is on every container's start path.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == sealed_exe::INIT_ARG)
    {
        // Executed through /proc/self/fd/N, the name would be a number.
        let _ = husk_runtime::sys::set_process_name(c"husk-init");
        husk_runtime::init::main();
    }
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log.as_deref(), &cli.log_format, cli.debug) {
        eprintln!("husk-runtime: {e}");
        return ExitCode::from(2);
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("husk-runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    if cli.systemd_cgroup {
        return Err(Error::Unsupported(
            "--systemd-cgroup is not supported: husk manages cgroupfs directly; set SystemdCgroup = false in containerd's runc options".into(),
        ));
    }
    let rt = Runtime::new(&cli.root);
    match cli.command {
        Command::Create { create, id } => {
            rt.create(&id, create_options(&create, false))?;
        }
        Command::Start { id } => rt.start(&id)?,
        Command::State { id } => {
            let (record, status) = rt.state(&id)?;
            println!("{}", pretty(&record.oci(status)));
        }
        Command::Kill { all, id, signal } => rt.kill(&id, signals::parse(&signal)?, all)?,
        Command::Delete { force, id } => rt.delete(&id, force)?,
        Command::Run {
            create,
            detach,
            keep,
            no_subreaper: _,
            id,
        } => return supervise::run(&rt, &id, create_options(&create, !detach), detach, keep),
        Command::Exec(args) => return exec(&rt, *args),
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps(&rt, &id, &format, &ps_args)?,
        Command::List { format, quiet } => list(&rt, &format, quiet)?,
        Command::Pause { id } => rt.pause(&id)?,
        Command::Resume { id } => rt.resume(&id)?,
        Command::Spec { bundle } => write_spec(&bundle, cli.rootless.as_deref() == Some("true"))?,
        Command::Features => println!("{}", pretty(&features())),
        Command::HardenedProfile { profile } => print!("{}", hardened_profile(profile.as_deref())?),
        Command::Update(args) => update(&rt, *args)?,
        Command::Events {
            stats,
            interval,
            id,
        } => events(&rt, &id, stats, interval)?,
        Command::Init => husk_runtime::init::main(),
    }
    Ok(0)
}

fn create_options(a: &CreateArgs, keep_console: bool) -> CreateOptions {
    CreateOptions {
        bundle: a.bundle.clone(),
        console_socket: a.console_socket.clone(),
        pid_file: a.pid_file.clone(),
        no_pivot: a.no_pivot,
        preserve_fds: a.preserve_fds,
        keep_console: keep_console && a.console_socket.is_none(),
        io: Default::default(),
    }
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let bytes = if path == Path::new("-") {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .map_err(|e| Error::invalid_spec(format!("read {what} from stdin: {e}")))?;
        b
    } else {
        std::fs::read(path)
            .map_err(|e| Error::invalid_spec(format!("read {what} {}: {e}", path.display())))?
    };
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        Error::invalid_spec(format!(
            "{what} {}: {}: {}",
            path.display(),
            e.path(),
            e.inner()
        ))
    })
}

/// The process to exec: a process.json, or the container's own process
/// with the command line's changes (as runc does).
fn exec_process(rt: &Runtime, a: &ExecArgs) -> Result<Process> {
    if let Some(path) = &a.process {
        return read_json(path, "process");
    }
    if a.command.is_empty() {
        return Err(Error::invalid_spec(
            "exec needs a COMMAND or --process FILE",
        ));
    }
    let (record, _) = rt.state(&a.id)?;
    let mut p = record.process.unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(a.env.iter().cloned());
    p.set_env(Some(env));
    if let Some(user) = &a.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let parse = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| Error::invalid_spec(format!("--user {user:?}: use numeric uid[:gid]")))
        };
        p.user_mut().set_uid(parse(uid)?);
        p.user_mut()
            .set_gid(gid.map(parse).transpose()?.unwrap_or(0));
    }
    if !a.additional_gids.is_empty() {
        p.user_mut()
            .set_additional_gids(Some(a.additional_gids.clone()));
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &a.cap {
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::Value::String(name.clone())).map_err(|_| {
                    Error::invalid_spec(format!(
                        "--cap {name:?} is not a capability name like CAP_NET_ADMIN"
                    ))
                })?;
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
        }
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

fn exec(rt: &Runtime, a: ExecArgs) -> Result<i32> {
    let process = exec_process(rt, &a)?;
    let opts = ExecOptions {
        console_socket: a.console_socket.clone(),
        pid_file: a.pid_file.clone(),
        preserve_fds: a.preserve_fds,
        keep_console: !a.detach && a.console_socket.is_none(),
        io: Default::default(),
    };
    supervise::exec(rt, &a.id, &process, opts, a.detach)
}

fn ps(rt: &Runtime, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let pids = rt.pids(id)?;
    match format {
        "json" => println!("{}", serde_json::to_string(&pids).unwrap_or_default()),
        "table" => {
            let args: Vec<String> = if ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps")
                .args(&args)
                .output()
                .map_err(|e| Error::Unsupported(format!("run ps {}: {e}", args.join(" "))))?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let pid_col = header
                .split_whitespace()
                .position(|c| c == "PID")
                .ok_or_else(|| Error::Unsupported("ps output has no PID column".into()))?;
            println!("{header}");
            for line in lines {
                let pid = line
                    .split_whitespace()
                    .nth(pid_col)
                    .and_then(|p| p.parse::<i32>().ok());
                if pid.is_some_and(|p| pids.contains(&p)) {
                    println!("{line}");
                }
            }
        }
        other => {
            return Err(Error::invalid_spec(format!(
                "unknown --format {other:?}; use table or json"
            )))
        }
    }
    Ok(())
}

fn list(rt: &Runtime, format: &str, quiet: bool) -> Result<()> {
    let all = rt.list()?;
    if quiet {
        for (s, _) in &all {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match format {
        "json" => {
            let states: Vec<_> = all.iter().map(|(s, st)| s.oci(*st)).collect();
            println!("{}", serde_json::to_string(&states).unwrap_or_default());
        }
        "table" => {
            println!(
                "{:<24} {:<8} {:<9} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for (s, st) in &all {
                let pid = if *st == Status::Stopped { 0 } else { s.pid };
                println!(
                    "{:<24} {:<8} {:<9} {:<40} {:<32} {}",
                    s.id,
                    pid,
                    st.to_string(),
                    s.bundle.display(),
                    s.created,
                    if s.owner.is_empty() { "root" } else { &s.owner }
                );
            }
        }
        other => {
            return Err(Error::invalid_spec(format!(
                "unknown --format {other:?}; use table or json"
            )))
        }
    }
    Ok(())
}

fn write_spec(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(Error::Bundle {
            bundle: bundle.to_path_buf(),
            reason: "config.json already exists; remove it first".into(),
        });
    }
    let spec = spec::default_spec(rootless);
    husk_runtime::state::write_atomic(&path, pretty(&spec).as_bytes())
}

fn features() -> serde_json::Value {
    let caps: Vec<String> = caps::all()
        .iter()
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": husk_runtime::state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "loud", "mand",
            "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid",
            "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave", "runbindable",
            "rw", "shared", "silent", "slave", "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": husk_runtime::seccomp::features(),
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "io.husk.runtime.version": env!("CARGO_PKG_VERSION"),
            "io.husk.runtime.exe-protection": "sealed-memfd",
            "io.husk.runtime.landlock": husk_runtime::landlock::abi()
                .map_or("unsupported".to_string(), |abi| format!("abi-{abi}")),
            "io.husk.runtime.seccomp-stacking": husk_runtime::seccomp::STACKED_ANNOTATION
        }
    })
}

/// The effective hardened profile as TOML, with where it came from and
/// what this kernel makes of it.
fn hardened_profile(path: Option<&Path>) -> Result<String> {
    use husk_runtime::hardened::Profile;
    let loaded = match path {
        Some(p) => Profile::load(p).map(|profile| (profile, Some(p.to_path_buf()))),
        None => Profile::effective(),
    };
    let (profile, source) = loaded.map_err(|e| Error::Unsupported(e.to_string()))?;
    let source = match source {
        Some(p) => p.display().to_string(),
        None => format!(
            "built-in defaults ({} does not exist)",
            husk_runtime::hardened::DEFAULT_PROFILE_PATH
        ),
    };
    let landlock = match husk_runtime::landlock::abi() {
        Some(abi) => format!("Landlock ABI {abi} on this kernel"),
        None => "no Landlock on this kernel: skipped".into(),
    };
    Ok(format!(
        "# husk hardened profile, from {source}\n# {landlock}\n{}",
        profile.to_toml()
    ))
}

fn update(rt: &Runtime, a: UpdateArgs) -> Result<()> {
    let mut r: LinuxResources = match &a.resources {
        Some(path) => read_json(path, "resources")?,
        None => LinuxResources::default(),
    };
    if a.memory.is_some() || a.memory_swap.is_some() {
        let mut m = (*r.memory()).unwrap_or_default();
        if a.memory.is_some() {
            m.set_limit(a.memory);
        }
        if a.memory_swap.is_some() {
            m.set_swap(a.memory_swap);
        }
        r.set_memory(Some(m));
    }
    if a.cpu_shares.is_some()
        || a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
    {
        let mut c = r.cpu().clone().unwrap_or_default();
        if a.cpu_shares.is_some() {
            c.set_shares(a.cpu_shares);
        }
        if a.cpu_quota.is_some() {
            c.set_quota(a.cpu_quota);
        }
        if a.cpu_period.is_some() {
            c.set_period(a.cpu_period);
        }
        if a.cpuset_cpus.is_some() {
            c.set_cpus(a.cpuset_cpus.clone());
        }
        if a.cpuset_mems.is_some() {
            c.set_mems(a.cpuset_mems.clone());
        }
        r.set_cpu(Some(c));
    }
    if let Some(limit) = a.pids_limit {
        let mut p = oci_spec::runtime::LinuxPids::default();
        p.set_limit(limit);
        r.set_pids(Some(p));
    }
    rt.update(&a.id, &r)
}

fn events(rt: &Runtime, id: &str, once: bool, interval: f64) -> Result<()> {
    let emit = |kind: &str, data: serde_json::Value| {
        println!(
            "{}",
            serde_json::json!({"type": kind, "id": id, "data": data})
        );
    };
    let mut ooms = rt.stats(id)?.oom_kills;
    loop {
        let stats = rt.stats(id)?;
        if stats.oom_kills > ooms {
            emit("oom", serde_json::Value::Null);
            ooms = stats.oom_kills;
        }
        emit("stats", serde_json::to_value(&stats).unwrap_or_default());
        if once {
            return Ok(());
        }
        let (_, status) = rt.state(id)?;
        if status == Status::Stopped {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(interval));
    }
}
