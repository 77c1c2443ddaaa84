//! The scenario list stays true, and the suite's "nothing left running" check can fail.

use lth_chaos::{split_test, SCENARIOS};
use lth_testkit::process::{processes_mentioning, workspace_root};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every listed test exists under its name (`async fn NAME(` in the named file), no slot is left
/// open, and the failure modes of issue 9 with a fault scenario are exactly those listed here (all ten).
#[test]
fn every_listed_scenario_names_a_test_that_exists() {
    let root = workspace_root();
    for s in SCENARIOS {
        let Some(test) = s.test else { continue };
        let (file, function) = split_test(test);
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{}: {e} (scenario {:?})", file.display(), s.fault));
        assert!(text.contains(&format!("async fn {function}(")) || text.contains(&format!("fn {function}(")), "{test} does not exist (scenario {:?})", s.fault);
    }
    let open: Vec<u8> = SCENARIOS.iter().filter(|s| s.test.is_none()).filter_map(|s| s.failure_mode).collect();
    assert!(open.is_empty(), "open slots: failure modes {open:?}");
    let covered: std::collections::BTreeSet<u8> = SCENARIOS.iter().filter(|s| s.test.is_some()).filter_map(|s| s.failure_mode).collect();
    assert_eq!(covered.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "failure modes of issue 9 with a fault scenario");
}

/// A process that names a test's folder on its command line is found, and is gone from the list
/// once it ends: the check `Cluster::stop_workers_and_check_none_left` relies on.
#[test]
fn a_stray_process_naming_the_test_folder_is_found() {
    let dir = tempfile_dir();
    // In a process group of its own, with no pipe of the test's: the shell forks `sleep`, and
    // killing the shell alone left that child holding the test's stdout until it ended (nextest
    // flagged the test LEAKY).
    let mut stray = Command::new("sh")
        .args(["-c", "sleep 30", "lth-stray"])
        .arg(&dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sh");
    let pid = stray.id() as i32;
    let t0 = Instant::now();
    while !processes_mentioning(&dir).iter().any(|(p, _)| *p == pid) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the stray process was not found");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the group this test started; no memory is involved.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0, "kill the stray's process group");
    stray.wait().unwrap();
    assert!(!processes_mentioning(&dir).iter().any(|(p, _)| *p == pid), "a reaped process is still listed");
}

/// A unique folder name (it need not exist: only command lines are searched).
fn tempfile_dir() -> String {
    format!("/tmp/lth-chaos-stray-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}
