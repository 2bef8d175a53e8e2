//! husk-core: the manager, `huskd`, and its CLI, `husk`.
//!
//! | module | concept |
//! | --- | --- |
//! | [`images`] | the image store: content, snapshots, overlay rootfs |

pub mod images;
