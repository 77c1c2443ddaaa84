//! Whose fault a failed job is: the job's own (a bad spec, bad data: the same on every machine) or
//! this machine's (node-local: the dataset path missing here, a full disk or quota, no usable
//! CUDA device, out of memory). The coordinator retries a node-local failure on another worker,
//! never on this one, and counts only the first against the job's attempts; a daemon whose jobs
//! keep failing node-locally stops claiming (`--max-node-failures`).
//!
//! Decided from the error's types, never from its wording, with one exception: libtorch's
//! out-of-memory error reaches Rust only as text (tch turns C++ exceptions into their message).

use crate::engine::data::DatasetMissing;

/// An I/O error of this machine's resources: the disk (ENOSPC, EDQUOT) or memory.
pub fn io_is_node_local(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::OutOfMemory) || e.raw_os_error() == Some(libc::EDQUOT)
}

/// Whether any cause in `e`'s chain is node-local.
pub fn is_node_local(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<DatasetMissing>().is_some()
            || cause.downcast_ref::<std::io::Error>().is_some_and(io_is_node_local)
            || cause.downcast_ref::<tch::TchError>().is_some_and(torch_out_of_memory)
    })
}

/// libtorch's c10::OutOfMemoryError ("CUDA out of memory. Tried to allocate …", and the CPU
/// allocator's "… out of memory"), as tch passes it on.
fn torch_out_of_memory(e: &tch::TchError) -> bool {
    matches!(e, tch::TchError::Torch(m) if m.contains("out of memory"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::io::Write;

    /// A real ENOSPC from the kernel: /dev/full refuses every write with it. (A full tmpfs needs
    /// a mount, which this test may not make.)
    #[test]
    fn a_full_disk_is_node_local() {
        let mut f = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
        let err = f.write_all(&[0u8; 4096]).and_then(|_| f.flush()).expect_err("/dev/full is always full");
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        let e = anyhow::Error::new(err).context("writing checkpoint.safetensors").context("level 2");
        assert!(is_node_local(&e));
    }

    /// The engine's own error for a dataset path that is not on this machine (a real lookup).
    #[test]
    fn a_missing_dataset_is_node_local_and_names_its_absolute_path() {
        let spec: lth_sweep::DatasetSpec =
            toml::from_str("name = \"mnist\"\npath = \"no-such-folder-on-this-machine\"").unwrap();
        let e = crate::engine::data::load_host(&spec).map(|_| ()).unwrap_err();
        assert!(is_node_local(&e), "{e:#}");
        let text = format!("{e:#}");
        let cwd = std::env::current_dir().unwrap();
        assert!(text.contains(&cwd.join("no-such-folder-on-this-machine").display().to_string()), "{text}");
    }

    #[test]
    fn the_jobs_own_failures_are_not() {
        let not_found = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!is_node_local(&anyhow::Error::new(not_found).context("reading the parent's weights")));
        let bad_json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert!(!is_node_local(&anyhow::Error::new(bad_json)));
        assert!(!is_node_local(&anyhow::anyhow!("the spec asks for 0 levels")));
        let oom: anyhow::Result<()> = Err(tch::TchError::Torch("CUDA out of memory. Tried to allocate 2.00 GiB".into())).context("training");
        assert!(is_node_local(&oom.unwrap_err()));
    }
}
