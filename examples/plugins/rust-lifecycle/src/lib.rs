//! The example lifecycle plugin: records every start and exit in the
//! host-provided store (needs `grants = ["store"]`), since globals do not
//! survive a call (each call is a fresh instance).
//!
//! Keys: `starts` and `exits` (counters), `start/<id>` = pid,
//! `exit/<id>` = `code:N` or `signal:N` (+ `,oom`) and the run time.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "lifecycle",
});

use exports::husk::plugin::lifecycle_hooks::Guest;
use husk::plugin::log::{log, Level};
use husk::plugin::store;
use husk::plugin::types::{ExitEvent, ExitStatus, StartEvent};

struct Recorder;

impl Guest for Recorder {
    fn on_start(event: StartEvent) {
        let _ = store::increment("starts", 1);
        let _ = store::set(
            &format!("start/{}", event.id),
            event.pid.to_string().as_bytes(),
        );
        log(
            Level::Info,
            &format!("container {} started as pid {}", event.id, event.pid),
        );
    }

    fn on_exit(event: ExitEvent) {
        let _ = store::increment("exits", 1);
        let mut status = match event.status {
            ExitStatus::Code(c) => format!("code:{c}"),
            ExitStatus::Signal(s) => format!("signal:{s}"),
        };
        if event.oom_killed {
            status.push_str(",oom");
        }
        status.push_str(&format!(",{}ms", event.duration_ms));
        let _ = store::set(&format!("exit/{}", event.id), status.as_bytes());
    }
}

export!(Recorder);
