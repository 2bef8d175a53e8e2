//! Test plugin: tries to read a file, open a TCP connection and read the
//! clock, and reports what happened as its deny reason:
//! `file=ok:<text>|err:<error>; net=ok|err:<error>; clock=<unix seconds>`.
//! The file and address come from its config (`file`, `addr`).

wit_bindgen::generate!({
    path: "../../../wit",
    world: "policy",
});

use exports::husk::plugin::policy_hooks::Guest;
use husk::plugin::config;
use husk::plugin::types::{ContainerView, Verdict};

struct Probe;

impl Guest for Probe {
    fn on_create(_c: ContainerView) -> Verdict {
        let file = match std::fs::read_to_string(config::get("file").unwrap_or_default()) {
            Ok(text) => format!("ok:{}", text.trim()),
            Err(e) => format!("err:{e}"),
        };
        let net = match std::net::TcpStream::connect(config::get("addr").unwrap_or_default()) {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("err:{e}"),
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Verdict::Deny(format!("file={file}; net={net}; clock={clock}"))
    }
}

export!(Probe);
