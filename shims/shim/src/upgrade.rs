//! `containerd-shim-husk-v2 -namespace NS -address ADDR -id ID upgrade
//! [-binary PATH] [-bundle B | -socket ADDR]`: asks the running shim of a
//! container to swap its binary live (`husk.shim.v1.Shim/Upgrade`), for
//! operators of stock containerd. The shim's socket is found as `start`
//! names it (its group: `-bundle`'s sandbox id, else the id), or given.

use std::path::Path;
use std::time::Duration;

use husk_shim_api::{ShimClient, UpgradeRequest, UpgradeResponse};

use crate::args::Args;
use crate::error::{Result, ShimError};
use crate::start;

/// How long the swap may take, probe included.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `upgrade`; returns the report printed.
pub fn run(args: &Args) -> Result<String> {
    args.require_id()?;
    let address = if !args.socket.is_empty() {
        args.socket.clone()
    } else {
        let group = if args.bundle.is_empty() {
            args.id.clone()
        } else {
            start::group_of(Path::new(&args.bundle), &args.id)
        };
        start::socket_address(&args.address, &args.namespace, &group)
    };
    let binary = if args.binary.is_empty() {
        String::new()
    } else {
        std::fs::canonicalize(&args.binary)
            .map_err(|e| ShimError::InvalidArgument(format!("-binary {}: {e}", args.binary)))?
            .to_string_lossy()
            .into_owned()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ShimError::io("start the tokio runtime"))?;
    let resp = rt.block_on(call(&address, binary))?;
    Ok(describe(&args.id, &resp))
}

/// One `Upgrade` call on a shim's socket.
pub async fn call(address: &str, binary: String) -> Result<UpgradeResponse> {
    let client = ttrpc::asynchronous::Client::connect(address)
        .await
        .map_err(|e| {
            ShimError::NotFound(format!(
                "no shim answers at {address} ({e}): check -namespace, -address and -id \
                 (or give -socket)"
            ))
        })?;
    let req = UpgradeRequest {
        binary,
        ..Default::default()
    };
    let ctx = ttrpc::context::with_timeout(TIMEOUT.as_nanos() as i64);
    ShimClient::new(client)
        .upgrade(ctx, &req)
        .await
        .map_err(|e| explain(address, e))
}

/// A failed `Upgrade` in words an operator can act on.
pub fn explain(address: &str, e: ttrpc::Error) -> ShimError {
    match e {
        ttrpc::Error::RpcStatus(s) if s.message.contains("service does not exist") => {
            ShimError::FailedPrecondition(format!(
                "the shim at {address} is not a husk shim (it does not serve \
                 husk.shim.v1.Shim); it cannot be swapped live"
            ))
        }
        ttrpc::Error::RpcStatus(s) => ShimError::FailedPrecondition(s.message),
        other => ShimError::Internal(format!(
            "the shim at {address} hung up during the swap ({other}): the new binary \
             crashed after it was executed. The shim is gone; its manager (containerd or \
             huskd) cleans up its containers as after any dead shim (docs/live-swap.md)"
        )),
    }
}

pub fn describe(id: &str, r: &UpgradeResponse) -> String {
    let mut s = format!(
        "shim of {id} (pid {}) swapped live: {} {} ({}) -> {} {} ({}), swap #{}, paused {:.1} ms",
        r.pid,
        r.old_binary,
        r.old_version,
        r.old_profile,
        r.binary,
        r.version,
        r.profile,
        r.swaps,
        r.pause_micros as f64 / 1000.0
    );
    if !r.note.is_empty() {
        s.push_str("\nnote: ");
        s.push_str(&r.note);
    }
    s
}
