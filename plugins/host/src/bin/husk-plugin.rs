//! `husk-plugin`: checks and tries plugin configs outside any container.
//!
//! huskd runs it for `husk plugin install` (validate and precompile) and
//! `husk plugin test` (one plugin's verdict on a spec), so that huskd itself
//! links neither wasmtime nor the runtime library. Operators can run it on
//! a config they maintain by hand. Output is JSON on stdout; errors go to
//! stderr with exit status 1.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk_plugins::{mutation, ContainerContext, PluginHost, Verdict};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "husk-plugin",
    version,
    about = "check and try husk plugin configs"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Loads every plugin of CONFIG, compiling into its cache what is not
    /// there yet, and lists them with the hooks they run at.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// One plugin's create verdict on a spec; nothing is run.
    Test {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        plugin: String,
        /// An OCI runtime spec (config.json); `-` for stdin.
        #[arg(long)]
        spec: PathBuf,
        /// The container id the plugin sees.
        #[arg(long, default_value = "husk-plugin-test")]
        id: String,
        /// The image reference the plugin sees.
        #[arg(long, default_value = "")]
        image: String,
        #[arg(long)]
        digest: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("husk-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<serde_json::Value, String> {
    match a.cmd {
        Cmd::Check { config } => {
            let host = PluginHost::from_config_file(&config).map_err(|e| e.to_string())?;
            let registry = host.registry();
            let plugins: Vec<_> = registry
                .plugins
                .iter()
                .map(|p| {
                    let c = p.config();
                    json!({
                        "name": c.name,
                        "path": c.path,
                        "kind": c.kind,
                        "hooks": p.hooks(),
                        "mode": c.mode,
                        "on_error": c.on_error,
                        "order": c.order,
                    })
                })
                .collect();
            Ok(json!({ "plugins": plugins }))
        }
        Cmd::Test {
            config,
            plugin,
            spec,
            id,
            image,
            digest,
        } => {
            let text = if spec.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| format!("reading the spec from stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(&spec)
                    .map_err(|e| format!("reading the spec {}: {e}", spec.display()))?
            };
            let spec: oci_spec::runtime::Spec = serde_json::from_str(&text)
                .map_err(|e| format!("the spec is not an OCI runtime spec: {e}"))?;
            let host = PluginHost::from_config_file(&config).map_err(|e| e.to_string())?;
            let ctx = ContainerContext {
                image_ref: image,
                image_digest: digest,
                ..Default::default()
            };
            let view = husk_plugins::view::from_spec(&id, &spec, &ctx);
            let verdict = host.verdict_of(&plugin, &view).ok_or_else(|| {
                format!(
                    "{plugin:?} is not a loaded plugin with a create hook in {}",
                    config.display()
                )
            })?;
            Ok(match verdict {
                Ok(Verdict::Allow) => json!({"plugin": plugin, "verdict": "allow"}),
                Ok(Verdict::Deny(reason)) => {
                    json!({"plugin": plugin, "verdict": "deny", "reason": reason})
                }
                Ok(Verdict::Mutate(edits)) => {
                    let described: Vec<String> = edits.iter().map(mutation::describe).collect();
                    let valid = mutation::apply(&spec, &edits).err().map(|e| e.to_string());
                    json!({"plugin": plugin, "verdict": "mutate", "edits": described, "invalid": valid})
                }
                Err(failure) => {
                    json!({"plugin": plugin, "verdict": "error", "reason": failure.to_string()})
                }
            })
        }
    }
}
