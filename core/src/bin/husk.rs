//! husk: the CLI. Every command is one call to huskd's API (docs/api.md).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use husk_core::api::{ContainerSummary, CreateParams, DEFAULT_SOCKET};
use husk_core::client::{Client, ClientError};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "husk",
    version,
    about = "husk: containers from Linux primitives"
)]
struct Cli {
    /// huskd's API socket.
    #[arg(long, global = true, env = "HUSK_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output: tables for people, JSON for scripts.
    #[arg(long, global = true, value_enum, default_value = "table")]
    format: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCmd),
    /// List images (`image ls`).
    Images,
    /// Remove an image name (`image rm`).
    Rmi { name: String },
    /// Create and start a container.
    Run(RunArgs),
    /// Create a container.
    Create(RunArgs),
    /// Start a created container.
    Start {
        /// Stream its output and exit with its code.
        #[arg(short, long)]
        attach: bool,
        id: String,
    },
    /// List containers.
    Ps {
        /// Stopped ones too.
        #[arg(short, long)]
        all: bool,
    },
    /// A container's output.
    Logs {
        #[arg(short, long)]
        follow: bool,
        id: String,
    },
    /// SIGTERM, then SIGKILL after the timeout.
    Stop {
        #[arg(short = 't', long = "time", default_value = "10")]
        timeout: u64,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Send a signal (default KILL).
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove containers.
    Rm {
        /// Kill them first if they run.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Wait for a container to exit; prints its code.
    Wait { id: String },
    /// A container's record, as JSON.
    Inspect { id: String },
    /// A container's processes.
    Top { id: String },
    /// Run a command in a running container; exits with its code.
    Exec {
        /// KEY=VALUE (repeatable).
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(short, long)]
        workdir: Option<String>,
        /// Feed it this terminal's stdin.
        #[arg(short, long)]
        interactive: bool,
        /// Give it a terminal.
        #[arg(short, long)]
        tty: bool,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// Memory, CPU and pids of running containers (one sample).
    Stats {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Manage policy and lifecycle plugins (they run in the shims).
    #[command(subcommand)]
    Plugin(PluginCmd),
    /// The containers' shims: list them, swap their binary live.
    #[command(subcommand)]
    Shim(ShimCmd),
    /// huskd's API version.
    Version,
}

#[derive(Subcommand)]
enum ShimCmd {
    /// Each running container's shim: binary, version, pid, uptime, swaps.
    #[command(alias = "list")]
    Ls {
        /// Also the spare shims huskd keeps ready for the next containers.
        #[arg(long)]
        spares: bool,
    },
    /// Swap shims to a new binary live: same pid, same containers
    /// (docs/live-swap.md).
    Upgrade {
        /// The new shim binary: a path, or a runtime name (native,
        /// hardened). Default: the file now at each shim's own path.
        #[arg(long)]
        binary: Option<String>,
        /// Every running container's shim.
        #[arg(long, conflicts_with = "container")]
        all: bool,
        /// The container whose shim to swap.
        #[arg(required_unless_present = "all")]
        container: Option<String>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Import an OCI layout (dir or tar) or a docker-archive tar.
    Import {
        path: PathBuf,
        /// Name the image (else the archive's names).
        #[arg(long)]
        name: Option<String>,
    },
    #[command(alias = "list")]
    Ls,
    #[command(alias = "remove")]
    Rm {
        name: String,
    },
    /// Remove blobs and snapshots no image uses.
    Prune,
    Inspect {
        name: String,
    },
}

#[derive(Subcommand)]
enum PluginCmd {
    /// Validate, precompile and install a plugin (a component `.wasm`, or
    /// a native `.so`); replaces one of the same name. Takes effect for
    /// the next container.
    Install {
        path: PathBuf,
        /// Defaults to the file name without its extension.
        #[arg(long)]
        name: Option<String>,
        /// Log and report would-denies instead of enforcing them.
        #[arg(long)]
        audit: bool,
        /// What a plugin that fails (trap, time or memory limit, invalid
        /// mutation) means: deny or allow.
        #[arg(long, value_name = "deny|allow")]
        on_error: Option<String>,
        #[arg(long, value_name = "MS")]
        time_limit: Option<u64>,
        #[arg(long, value_name = "MIB")]
        memory_limit: Option<u64>,
        /// A capability to grant: store, clock, random, fs:DIR... (repeatable).
        #[arg(long = "grant", value_name = "CAP")]
        grants: Vec<String>,
        /// KEY=VALUE for the plugin's config map (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Hooks run in ascending order (default: after the others).
        #[arg(long)]
        order: Option<i64>,
    },
    #[command(alias = "list")]
    Ls,
    #[command(alias = "remove")]
    Rm { name: String },
    /// A plugin's verdict and edits on a spec, running nothing.
    Test {
        name: String,
        /// An OCI runtime spec (config.json).
        #[arg(long, conflicts_with = "image", required_unless_present = "image")]
        spec: Option<PathBuf>,
        /// The spec `husk run IMAGE` would create.
        #[arg(long)]
        image: Option<String>,
    },
    /// Start a new plugin project that builds out of the box.
    New {
        #[arg(long, value_name = "rust|python|js|c")]
        lang: String,
        name: String,
        /// Where (default: ./NAME).
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    Create {
        name: String,
    },
    #[command(alias = "list")]
    Ls,
    Inspect {
        name: String,
    },
    #[command(alias = "remove")]
    Rm {
        name: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Run in the background; print the id.
    #[arg(short, long)]
    detach: bool,
    /// Keep stdin open and feed it this terminal's stdin.
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    #[arg(long)]
    name: Option<String>,
    /// KEY=VALUE (repeatable).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// SRC:DST[:ro] (repeatable); SRC a host path or a volume name.
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// Memory limit: bytes, or with k/m/g.
    #[arg(short, long)]
    memory: Option<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids_limit: Option<i64>,
    #[arg(long)]
    read_only: bool,
    /// user[:group], names or ids.
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long)]
    entrypoint: Option<String>,
    /// native, hardened, runc, or an absolute path to a shim v2 binary.
    #[arg(long)]
    runtime: Option<String>,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

struct Fail(u8, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Self {
        Fail(125, e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, msg)) => {
            eprintln!("husk: {msg}");
            ExitCode::from(code)
        }
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap());
}

fn table(rows: Vec<Vec<String>>) {
    let n = rows.first().map(|r| r.len()).unwrap_or(0);
    let w: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c.clone()
                } else {
                    format!("{c:<width$}", width = w[i])
                }
            })
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

fn out(stream: &str, data: &str) {
    if stream == "stderr" {
        let mut e = std::io::stderr();
        let _ = e.write_all(data.as_bytes());
        let _ = e.flush();
    } else {
        let mut o = std::io::stdout();
        let _ = o.write_all(data.as_bytes());
        let _ = o.flush();
    }
}

fn create_params(a: &RunArgs) -> Result<CreateParams, Fail> {
    let memory = match &a.memory {
        Some(m) => {
            Some(husk_core::spec_builder::parse_memory(m).map_err(|e| Fail(125, e.to_string()))?)
        }
        None => None,
    };
    Ok(CreateParams {
        image: a.image.clone(),
        name: a.name.clone(),
        cmd: a.cmd.clone(),
        entrypoint: a.entrypoint.as_ref().map(|e| {
            if e.is_empty() {
                vec![]
            } else {
                vec![e.clone()]
            }
        }),
        env: a.env.clone(),
        volumes: a.volume.clone(),
        memory,
        cpus: a.cpus,
        pids_limit: a.pids_limit,
        read_only: a.read_only,
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        hostname: a.hostname.clone(),
        runtime: a.runtime.clone(),
        auto_remove: a.rm,
        stdin: a.interactive,
        tty: a.tty,
        labels: Default::default(),
    })
}

fn age(t: u64) -> String {
    let now = husk_core::state::now();
    let d = now.saturating_sub(t);
    match d {
        0..=59 => format!("{d} seconds ago"),
        60..=3599 => format!("{} minutes ago", d / 60),
        3600..=86399 => format!("{} hours ago", d / 3600),
        _ => format!("{} days ago", d / 86400),
    }
}

fn run(cli: &Cli) -> Result<u8, Fail> {
    let c = Client::new(&cli.socket);
    let json_out = cli.format == Format::Json;
    match &cli.cmd {
        Cmd::Version => print_json(&c.call("version", json!({}))?),
        Cmd::Image(ImageCmd::Import { path, name }) => {
            let path = std::fs::canonicalize(path)
                .map_err(|e| Fail(125, format!("{}: {e}", path.display())))?;
            let r = c.call("image.import", json!({"path": path, "name": name}))?;
            if json_out {
                print_json(&r);
            } else {
                for i in r.as_array().into_iter().flatten() {
                    println!(
                        "imported {} ({}, {} new layers unpacked)",
                        i["name"].as_str().unwrap_or(""),
                        i["digest"].as_str().unwrap_or(""),
                        i["unpacked"]
                    );
                }
            }
        }
        Cmd::Images | Cmd::Image(ImageCmd::Ls) => {
            let r = c.call("image.list", json!({}))?;
            if json_out {
                print_json(&r);
            } else {
                let mut rows = vec![vec!["NAME".into(), "DIGEST".into(), "SIZE".into()]];
                for i in r.as_array().into_iter().flatten() {
                    let d = i["digest"].as_str().unwrap_or("");
                    rows.push(vec![
                        i["name"].as_str().unwrap_or("").into(),
                        d.chars().take(19).collect(),
                        i["size"].to_string(),
                    ]);
                }
                table(rows);
            }
        }
        Cmd::Rmi { name } | Cmd::Image(ImageCmd::Rm { name }) => {
            c.call("image.remove", json!({"name": name}))?;
            println!("{name}");
        }
        Cmd::Image(ImageCmd::Prune) => {
            let r = c.call("image.prune", json!({}))?;
            if json_out {
                print_json(&r);
            } else {
                let n = |k: &str| r[k].as_array().map(|a| a.len()).unwrap_or(0);
                println!(
                    "removed {} blobs and {} snapshots, freed {} bytes",
                    n("blobs_removed"),
                    n("snapshots_removed"),
                    r["bytes_freed"]
                );
            }
        }
        Cmd::Image(ImageCmd::Inspect { name }) => {
            print_json(&c.call("image.inspect", json!({"name": name}))?)
        }
        Cmd::Run(a) if !a.detach => {
            // One request: create, start, attach (`container.run`).
            let p = create_params(a)?;
            // Signals are held from here, and passed on once the
            // container exists (as `docker run` does, not with a terminal).
            let forward = if a.tty {
                None
            } else {
                forward_signals(&cli.socket)
            };
            let on_created = |r: &Value| {
                report_policy(&r["policy"]);
                if let (Some(tx), Some(id)) = (&forward, r["id"].as_str()) {
                    let _ = tx.send(id.to_string());
                }
            };
            let params = serde_json::to_value(&p).unwrap();
            let stdin = a.interactive.then_some(a.tty);
            let r = c.run(params, stdin, on_created, out)?;
            let code = r["exit_code"].as_i64().unwrap_or(125);
            return Ok(exit_byte(code));
        }
        Cmd::Run(a) | Cmd::Create(a) => {
            let is_run = matches!(cli.cmd, Cmd::Run(_));
            let p = create_params(a)?;
            let r = c.call("container.create", serde_json::to_value(&p).unwrap())?;
            let id = r["id"].as_str().unwrap_or("").to_string();
            report_policy(&r["policy"]);
            if !is_run {
                println!("{id}");
                return Ok(0);
            }
            // `run -d` (an attached run is `container.run` above).
            c.call("container.start", json!({"id": id}))?;
            println!("{id}");
            return Ok(0);
        }
        Cmd::Start { attach, id } => {
            if *attach {
                let r =
                    c.call_streaming("container.start", json!({"id": id, "attach": true}), out)?;
                return Ok(exit_byte(r["exit_code"].as_i64().unwrap_or(125)));
            }
            c.call("container.start", json!({"id": id}))?;
            println!("{id}");
        }
        Cmd::Ps { all } => {
            let r = c.call("container.list", json!({"all": all}))?;
            if json_out {
                print_json(&r);
            } else {
                let list: Vec<ContainerSummary> =
                    serde_json::from_value(r).map_err(|e| Fail(125, e.to_string()))?;
                let mut rows = vec![[
                    "ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "RUNTIME",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()];
                for s in list {
                    let status = match (s.status, s.exit_code) {
                        (husk_core::api::Status::Stopped, Some(c)) => format!("exited ({c})"),
                        (st, _) => st.to_string(),
                    };
                    let mut cmd = s.command.join(" ");
                    if cmd.chars().count() > 30 {
                        cmd = cmd.chars().take(29).collect::<String>() + "…";
                    }
                    rows.push(vec![
                        s.id[..12].to_string(),
                        s.name,
                        s.image,
                        format!("{cmd:?}"),
                        age(s.created_at),
                        status,
                        s.runtime,
                    ]);
                }
                table(rows);
            }
        }
        Cmd::Logs { follow, id } => {
            c.call_streaming("container.logs", json!({"id": id, "follow": follow}), out)?;
        }
        Cmd::Stop { timeout, ids } => {
            for id in ids {
                c.call("container.stop", json!({"id": id, "timeout": timeout}))?;
                println!("{id}");
            }
        }
        Cmd::Kill { signal, ids } => {
            for id in ids {
                c.call("container.kill", json!({"id": id, "signal": signal}))?;
                println!("{id}");
            }
        }
        Cmd::Rm { force, ids } => {
            for id in ids {
                c.call("container.remove", json!({"id": id, "force": force}))?;
                println!("{id}");
            }
        }
        Cmd::Wait { id } => {
            let r = c.call("container.wait", json!({"id": id}))?;
            println!("{}", r["exit_code"]);
        }
        Cmd::Inspect { id } => print_json(&c.call("container.inspect", json!({"id": id}))?),
        Cmd::Exec {
            env,
            user,
            workdir,
            interactive,
            tty,
            id,
            cmd,
        } => {
            let params = json!({"id": id, "cmd": cmd, "env": env, "user": user,
                                "workdir": workdir, "stdin": interactive, "tty": tty});
            let r = if *interactive {
                c.call_interactive("container.exec", params, *tty, out)?
            } else {
                c.call_streaming("container.exec", params, out)?
            };
            return Ok(exit_byte(r["exit_code"].as_i64().unwrap_or(125)));
        }
        Cmd::Stats { ids } => {
            let mut all = Vec::new();
            for id in ids {
                all.push(c.call("container.stats", json!({"id": id}))?);
            }
            if json_out {
                print_json(&Value::Array(all));
            } else {
                let mut rows = vec![["ID", "NAME", "CPU TIME", "MEM USAGE / LIMIT", "PIDS"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()];
                let mib =
                    |v: &Value| format!("{:.1}MiB", v.as_u64().unwrap_or(0) as f64 / 1048576.0);
                for s in all {
                    let limit = s["memory_limit"].as_u64().unwrap_or(0);
                    let limit = if limit == 0 || limit >= 1 << 60 {
                        "unlimited".to_string()
                    } else {
                        mib(&s["memory_limit"])
                    };
                    rows.push(vec![
                        s["id"].as_str().unwrap_or("").chars().take(12).collect(),
                        s["name"].as_str().unwrap_or("").into(),
                        format!(
                            "{:.2}s",
                            s["cpu_usage_ns"].as_u64().unwrap_or(0) as f64 / 1e9
                        ),
                        format!("{} / {limit}", mib(&s["memory_usage"])),
                        s["pids"].to_string(),
                    ]);
                }
                table(rows);
            }
        }
        Cmd::Top { id } => {
            let r = c.call("container.top", json!({"id": id}))?;
            if json_out {
                print_json(&r);
            } else {
                let mut rows = vec![vec!["PID".to_string(), "CMD".to_string()]];
                for p in r["pids"].as_array().into_iter().flatten() {
                    let pid = p.as_u64().unwrap_or(0);
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|b| {
                            String::from_utf8_lossy(&b)
                                .split('\0')
                                .filter(|s| !s.is_empty())
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    rows.push(vec![pid.to_string(), cmd]);
                }
                table(rows);
            }
        }
        Cmd::Volume(v) => match v {
            VolumeCmd::Create { name } => {
                c.call("volume.create", json!({"name": name}))?;
                println!("{name}");
            }
            VolumeCmd::Ls => {
                let r = c.call("volume.list", json!({}))?;
                if json_out {
                    print_json(&r);
                } else {
                    let mut rows = vec![vec!["NAME".to_string(), "USED BY".to_string()]];
                    for v in r.as_array().into_iter().flatten() {
                        let users: Vec<&str> = v["used_by"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|u| u.as_str())
                            .collect();
                        rows.push(vec![
                            v["name"].as_str().unwrap_or("").into(),
                            users.join(","),
                        ]);
                    }
                    table(rows);
                }
            }
            VolumeCmd::Inspect { name } => {
                print_json(&c.call("volume.inspect", json!({"name": name}))?)
            }
            VolumeCmd::Rm { name } => {
                c.call("volume.remove", json!({"name": name}))?;
                println!("{name}");
            }
        },
        Cmd::Plugin(cmd) => return plugin_cmd(&c, cmd, json_out),
        Cmd::Shim(ShimCmd::Ls { spares }) => {
            let (v, rows) = husk_core::shims::cli::ls(&c, *spares)?;
            if json_out {
                print_json(&v);
            } else {
                table(rows);
            }
        }
        Cmd::Shim(ShimCmd::Upgrade {
            binary,
            all,
            container,
        }) => {
            let (v, lines, ok) =
                husk_core::shims::cli::upgrade(&c, container.as_deref(), *all, binary.as_deref())?;
            if json_out {
                print_json(&v);
            } else {
                lines.iter().for_each(|l| println!("{l}"));
            }
            return Ok(if ok { 0 } else { 1 });
        }
    }
    Ok(0)
}

/// What the shim's policy plugins noted about a new container, on stderr:
/// audit-mode would-denies, and edits.
fn report_policy(policy: &Value) {
    let notes = |key: &str| -> Vec<(String, String)> {
        policy[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| {
                let s = |k: &str| n[k].as_str().unwrap_or("").to_string();
                (s("plugin"), s("note"))
            })
            .collect()
    };
    for (plugin, reason) in notes("audit_denials") {
        eprintln!("husk: audit: policy {plugin} would deny: {reason}");
    }
    for (plugin, edit) in notes("edits") {
        eprintln!("husk: policy {plugin}: {edit}");
    }
}

fn plugin_cmd(c: &Client, cmd: &PluginCmd, json_out: bool) -> Result<u8, Fail> {
    match cmd {
        PluginCmd::Install {
            path,
            name,
            audit,
            on_error,
            time_limit,
            memory_limit,
            grants,
            config,
            order,
        } => {
            let path = std::fs::canonicalize(path)
                .map_err(|e| Fail(125, format!("{}: {e}", path.display())))?;
            let mut map = serde_json::Map::new();
            for kv in config {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| Fail(125, format!("invalid --config {kv:?}: use KEY=VALUE")))?;
                map.insert(k.into(), json!(v));
            }
            let r = c.call(
                "plugin.install",
                json!({
                    "path": path, "name": name, "mode": audit.then_some("audit"),
                    "on_error": on_error, "time_limit_ms": time_limit,
                    "memory_limit_mib": memory_limit, "grants": grants,
                    "config": map, "order": order,
                }),
            )?;
            if json_out {
                print_json(&r);
            } else {
                println!(
                    "installed {} ({}, hooks: {})",
                    r["name"].as_str().unwrap_or(""),
                    r["mode"].as_str().unwrap_or(""),
                    strs(&r["hooks"]).join(",")
                );
            }
        }
        PluginCmd::Ls => {
            let r = c.call("plugin.list", json!({}))?;
            if json_out {
                print_json(&r);
            } else {
                let mut rows = vec![[
                    "NAME", "KIND", "HOOKS", "MODE", "ON ERROR", "ORDER", "SHA256",
                ]
                .map(String::from)
                .to_vec()];
                for p in r.as_array().into_iter().flatten() {
                    let s = |k: &str| p[k].as_str().unwrap_or("").to_string();
                    rows.push(vec![
                        s("name"),
                        s("kind"),
                        strs(&p["hooks"]).join(","),
                        s("mode"),
                        s("on_error"),
                        p["order"].to_string(),
                        s("sha256").chars().take(12).collect(),
                    ]);
                }
                table(rows);
            }
        }
        PluginCmd::Rm { name } => {
            c.call("plugin.remove", json!({"name": name}))?;
            println!("{name}");
        }
        PluginCmd::Test { name, spec, image } => {
            let spec = match spec {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| Fail(125, format!("{}: {e}", path.display())))?;
                    let v: Value = serde_json::from_str(&text)
                        .map_err(|e| Fail(125, format!("{} is not JSON: {e}", path.display())))?;
                    Some(v)
                }
                None => None,
            };
            let r = c.call(
                "plugin.test",
                json!({"name": name, "spec": spec, "image": image}),
            )?;
            if json_out {
                print_json(&r);
            } else {
                let verdict = r["verdict"].as_str().unwrap_or("");
                match verdict {
                    "deny" | "error" => {
                        println!("{verdict}: {}", r["reason"].as_str().unwrap_or(""))
                    }
                    "mutate" => {
                        println!("mutate:");
                        for e in strs(&r["edits"]) {
                            println!("  {e}");
                        }
                        if let Some(bad) = r["invalid"].as_str() {
                            println!("  (invalid: {bad})");
                        }
                    }
                    other => println!("{other}"),
                }
            }
            // Scripts can test the verdict: 0 allow/mutate, 1 deny, 2 error.
            return Ok(match r["verdict"].as_str() {
                Some("deny") => 1,
                Some("error") => 2,
                _ => 0,
            });
        }
        PluginCmd::New { lang, name, dir } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            let lang = lang
                .parse()
                .map_err(|e: husk_core::CoreError| Fail(125, e.to_string()))?;
            let report = husk_core::plugin_scaffold::scaffold(lang, name, &dir)
                .map_err(|e| Fail(125, e.to_string()))?;
            println!("{report}");
        }
    }
    Ok(0)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// A container's exit code as the process's.
fn exit_byte(code: i64) -> u8 {
    if (0..=255).contains(&code) {
        code as u8
    } else {
        125
    }
}

/// Like `docker run`'s sig-proxy: SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1
/// and SIGUSR2 sent to `husk run` are passed on to the container (with a
/// terminal, ^C already reaches it through the pty).
/// Blocks the signals `docker run` passes on (INT, TERM, HUP, QUIT, USR1,
/// USR2) and passes each to the container whose id comes on the returned
/// channel (held until then); `None` if they cannot be blocked.
fn forward_signals(socket: &std::path::Path) -> Option<std::sync::mpsc::Sender<String>> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    // Blocked here, before any other thread exists, so every thread
    // inherits the mask and only the waiter below takes them.
    if set.thread_block().is_err() {
        return None;
    }
    let socket = socket.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Signals that come before the container exists stay pending.
        let Ok(id) = rx.recv() else { return };
        loop {
            let Ok(sig) = set.wait() else { return };
            let c = Client::new(&socket);
            let _ = c.call(
                "container.kill",
                json!({"id": id, "signal": (sig as i32).to_string()}),
            );
        }
    });
    Some(tx)
}
