//! `delete -bundle B -id ID`: containerd's cleanup after a shim died. Kill
//! and remove what is left of the container, unmount its rootfs, and print
//! a protobuf `DeleteResponse`.

use std::os::unix::net::UnixStream;

use containerd_shim_protos::api::DeleteResponse;
use husk_runtime::Runtime;
use protobuf::Message;

use crate::args::Args;
use crate::error::{Result, ShimError};
use crate::state::ExitRecord;
use crate::{hardening, rootfs, runtime_root, start, Profile};

pub fn run(args: &Args, profile: Profile) -> Result<Vec<u8>> {
    args.require_id()?;
    let bundle = start::bundle_dir(args)?;
    let runtime = Runtime::new(runtime_root(&args.namespace));
    match runtime.delete(&args.id, true) {
        Ok(()) | Err(husk_runtime::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(id = args.id, "deleting the container: {e}"),
    }
    hardening::release(profile, &args.id);
    rootfs::unmount(&bundle.join("rootfs"));
    // The dead shim's socket, unless another container's shim serves it.
    let group = start::group_of(&bundle, &args.id);
    let address = start::socket_address(&args.address, &args.namespace, &group);
    let path = start::socket_path(&address);
    if UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let exit = ExitRecord::now(128 + libc::SIGKILL as u32);
    let resp = DeleteResponse {
        pid: 0,
        exit_status: exit.status,
        exited_at: Some(exit.timestamp()).into(),
        ..Default::default()
    };
    resp.write_to_bytes()
        .map_err(|e| ShimError::Internal(format!("encode DeleteResponse: {e}")))
}
