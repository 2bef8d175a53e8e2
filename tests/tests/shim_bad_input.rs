//! Must show: bad input gets a clear error and no leak. Create with a bad
//! bundle, Exec with a duplicate exec id, Kill or State of an unknown id,
//! and a truncated or garbage ttrpc frame on the socket. Talks to the
//! shim's socket directly with a ttrpc client, beside containerd.

#[path = "shim_common/mod.rs"]
mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use common::*;
use containerd_shim_protos::api;
use containerd_shim_protos::TaskClient;
use husk_tests::leaks::assert_no_leaks;
use husk_tests::{require_root, unique_id};
use protobuf::well_known_types::any::Any;
use ttrpc::Code;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(10_000_000_000)
}

fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message.clone()),
        other => panic!("expected an RPC error status, got {other:?}"),
    }
}

#[test]
fn bad_rpcs_get_clear_errors_and_leak_nothing() {
    require_root!();
    let env = containerd();
    let ctd = &env.ctd;
    let id = unique_id("shim-bad");
    run_sleeper(ctd, NATIVE, &id);
    wait_task_status(ctd, &id, "RUNNING");
    let address = std::fs::read_to_string(
        ctd.state()
            .join("io.containerd.runtime.v2.task/default")
            .join(&id)
            .join("address"),
    )
    .expect("the shim's address file in the bundle");
    let client =
        TaskClient::new(ttrpc::Client::connect(address.trim()).expect("connect to the shim"));

    // State and Kill of an unknown id.
    let (c, msg) = code(client.state(
        ctx(),
        &api::StateRequest {
            id: "nope".into(),
            ..Default::default()
        },
    ));
    assert_eq!(c, Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("nope"), "{msg}");
    let (c, msg) = code(client.kill(
        ctx(),
        &api::KillRequest {
            id: "nope".into(),
            signal: 9,
            ..Default::default()
        },
    ));
    assert_eq!(c, Code::NOT_FOUND, "{msg}");

    // Exec with a duplicate exec id.
    let mut spec = Any::new();
    spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
    spec.value = br#"{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec();
    let exec = api::ExecProcessRequest {
        id: id.clone(),
        exec_id: "dup".into(),
        spec: Some(spec).into(),
        ..Default::default()
    };
    client.exec(ctx(), &exec).expect("first exec");
    let (c, msg) = code(client.exec(ctx(), &exec));
    assert_eq!(c, Code::ALREADY_EXISTS, "{msg}");
    client
        .delete(
            ctx(),
            &api::DeleteRequest {
                id: id.clone(),
                exec_id: "dup".into(),
                ..Default::default()
            },
        )
        .expect("delete the unstarted exec");
    // Exec with a spec that is not JSON.
    let mut bad = exec.clone();
    bad.exec_id = "bad".into();
    bad.spec.as_mut().unwrap().value = b"not json".to_vec();
    let (c, msg) = code(client.exec(ctx(), &bad));
    assert_eq!(c, Code::INVALID_ARGUMENT, "{msg}");

    // Create with a bundle that does not exist.
    let bad_id = unique_id("shim-badbundle");
    let r = client.create(
        ctx(),
        &api::CreateTaskRequest {
            id: bad_id.clone(),
            bundle: "/nonexistent/husk-bundle".into(),
            ..Default::default()
        },
    );
    let (c, msg) = code(r);
    assert_ne!(c, Code::OK);
    assert!(
        msg.contains("bundle") || msg.contains("config.json"),
        "{msg}"
    );
    assert_no_leaks(&bad_id);
    assert!(!std::path::Path::new("/run/containerd/husk/default")
        .join(&bad_id)
        .exists());
    // Empty ids.
    let (c, _) = code(client.create(ctx(), &api::CreateTaskRequest::default()));
    assert_eq!(c, Code::INVALID_ARGUMENT);

    // Garbage and truncated frames: the connection is dropped, the shim serves on.
    let path = address.trim().trim_start_matches("unix://");
    let mut s = UnixStream::connect(path).unwrap();
    let _ = s.write_all(&[0xff; 64]);
    drop(s);
    let mut s = UnixStream::connect(path).unwrap();
    // A header announcing 100 bytes of request, then 3 bytes and a hangup.
    let _ = s.write_all(&[0, 0, 0, 100, 0, 0, 0, 1, 1, 0, 1, 2, 3]);
    drop(s);
    let mut s = UnixStream::connect(path).unwrap();
    // A header announcing a 1 GiB message.
    let _ = s.write_all(&[0x40, 0, 0, 0, 0, 0, 0, 3, 1, 0]);
    drop(s);
    let st = client
        .state(
            ctx(),
            &api::StateRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .expect("the shim still serves after garbage");
    assert_eq!(
        st.status.value(),
        containerd_shim_protos::types::task::Status::RUNNING as i32
    );

    // Checkpoint is not implemented, and says so.
    let (c, _) = code(client.checkpoint(
        ctx(),
        &api::CheckpointTaskRequest {
            id: id.clone(),
            ..Default::default()
        },
    ));
    assert_eq!(c, Code::UNIMPLEMENTED);

    drop(client);
    kill_delete_and_check(ctd, &id);
}
