//! Crash safety of the embedded store: a child process (this test binary, re-executed) writes
//! concurrently and prints every write once it is acknowledged; the parent SIGKILLs it mid-way,
//! reopens the file and checks that every acknowledged write is there and that revisions only
//! grow. Three rounds on the same file, killed after different numbers of writes.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use xkube_store::{EmbeddedOptions, EmbeddedStore, Revision, Store};

const CHILD_DIR: &str = "XKUBE_STORE_CRASH_CHILD_DIR";
const CHILD_ROUND: &str = "XKUBE_STORE_CRASH_CHILD_ROUND";
const CHILD_QUICK_REPAIR: &str = "XKUBE_STORE_CRASH_CHILD_QUICK_REPAIR";
const WRITERS: usize = 4;

/// The child's work; does nothing unless the parent test started this binary with
/// `XKUBE_STORE_CRASH_CHILD_DIR` set. Each writer creates keys and bumps its own counter with
/// compare-and-swap, printing `ACK create <key> <rev>` / `ACK counter <key> <n> <rev>` after each
/// acknowledged write. Bounded: stops after 60 s or 20,000 writes per writer if never killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round = std::env::var(CHILD_ROUND).unwrap_or_default();
    let quick_repair = std::env::var(CHILD_QUICK_REPAIR).as_deref() == Ok("1");
    let store = EmbeddedStore::open_with(&dir, options(quick_repair))
        .await
        .unwrap_or_else(|e| panic!("child: open {dir}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let writers = (0..WRITERS).map(|w| {
        let store = store.clone();
        let round = round.clone();
        tokio::spawn(async move {
            let counter = format!("/crash/counter/{w}");
            let mut current = match store.get(&counter).await.expect("child: get counter") {
                Some(kv) => kv,
                None => store
                    .create(&counter, b"0".to_vec())
                    .await
                    .expect("child: create counter"),
            };
            for i in 0..20_000 {
                if Instant::now() > deadline {
                    break;
                }
                let key = format!("/crash/r{round}/w{w}/{i:05}");
                let kv = store
                    .create(&key, key.clone().into_bytes())
                    .await
                    .expect("child: create");
                ack(&format!("ACK create {key} {}", kv.mod_revision));
                let n: u64 = String::from_utf8_lossy(&current.value)
                    .parse()
                    .expect("child: counter value");
                current = store
                    .update(
                        &counter,
                        (n + 1).to_string().into_bytes(),
                        current.mod_revision,
                    )
                    .await
                    .expect("child: bump counter");
                ack(&format!(
                    "ACK counter {counter} {} {}",
                    n + 1,
                    current.mod_revision
                ));
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.expect("child: writer task");
    }
}

fn options(quick_repair: bool) -> EmbeddedOptions {
    EmbeddedOptions {
        quick_repair,
        ..EmbeddedOptions::default()
    }
}

fn ack(line: &str) {
    // Straight to the process's stdout (not libtest's capture), flushed before the next write.
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("child: write ack");
    out.flush().expect("child: flush ack");
}

#[derive(Default)]
struct Acked {
    creates: BTreeMap<String, Revision>,
    counters: BTreeMap<String, u64>,
    max_revision: Revision,
}

impl Acked {
    fn record(&mut self, line: &str) -> bool {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let parse = |s: &str| -> i64 {
            s.parse()
                .unwrap_or_else(|e| panic!("ack line {line:?}: {e}"))
        };
        match parts.as_slice() {
            ["ACK", "create", key, rev] => {
                let rev = parse(rev);
                self.creates.insert((*key).to_owned(), rev);
                self.max_revision = self.max_revision.max(rev);
                true
            }
            ["ACK", "counter", key, n, rev] => {
                let n = parse(n) as u64;
                let entry = self.counters.entry((*key).to_owned()).or_default();
                *entry = (*entry).max(n);
                self.max_revision = self.max_revision.max(parse(rev));
                true
            }
            _ => false,
        }
    }
}

/// With the default one-phase commits (redb checksums), repaired by a full walk on reopen.
#[test]
fn sigkill_mid_write_loses_no_acknowledged_write() {
    sigkill_rounds(false);
}

/// The same with redb's quick repair (two-phase commits, saved allocator state).
#[test]
fn sigkill_mid_write_loses_no_acknowledged_write_with_quick_repair() {
    sigkill_rounds(true);
}

fn sigkill_rounds(quick_repair: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut acked = Acked::default();
    let mut revision_after_last_round = 0;
    for (round, kill_after) in [(0, 40), (1, 150), (2, 7)] {
        let round_start = acked.creates.len();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, round.to_string())
            .env(CHILD_QUICK_REPAIR, if quick_repair { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child writer");
        let stdout = child.stdout.take().expect("child stdout");
        let (lines_tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill once the child has acknowledged `kill_after` more writes.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < kill_after {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if acked.record(&line) {
                        seen += 1;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "round {round}: child acknowledged only {seen} writes before it stopped or 60 s passed"
                    );
                }
            }
        }
        // A little jitter so the kill lands at different points of a commit.
        let jitter = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 3_000)
            .unwrap_or(0);
        std::thread::sleep(Duration::from_micros(u64::from(jitter)));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(
            !status.success(),
            "round {round}: the child was killed, not finished"
        );
        // Lines the child printed before it died were acknowledged too.
        reader.join().expect("reader thread");
        for line in lines.try_iter() {
            acked.record(&line);
        }
        assert!(
            acked.creates.len() > round_start,
            "round {round}: the child wrote something"
        );

        rt.block_on(async {
            let store = EmbeddedStore::open_with(dir.path(), options(quick_repair))
                .await
                .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL: {e}"));
            let revision = store.current_revision().await.expect("revision");
            assert!(
                revision >= acked.max_revision,
                "round {round}: revision {revision} below the acknowledged {}",
                acked.max_revision
            );
            assert!(
                revision >= revision_after_last_round,
                "round {round}: revision went back from {revision_after_last_round} to {revision}"
            );
            for (key, rev) in &acked.creates {
                let kv = store.get(key).await.expect("get").unwrap_or_else(|| {
                    panic!("round {round}: acknowledged create of {key} at {rev} is lost")
                });
                assert_eq!(kv.mod_revision, *rev, "round {round}: {key}");
                assert_eq!(kv.value, key.as_bytes(), "round {round}: {key}");
            }
            for (key, n) in &acked.counters {
                let kv = store.get(key).await.expect("get").expect("counter exists");
                let value: u64 = String::from_utf8_lossy(&kv.value)
                    .parse()
                    .expect("counter value");
                assert!(
                    value >= *n,
                    "round {round}: counter {key} is {value}, below the acknowledged {n}"
                );
            }
            // The store keeps working, at a higher revision.
            let kv = store
                .create(&format!("/crash/after/{round}"), vec![])
                .await
                .expect("write after recovery");
            assert!(kv.mod_revision > revision);
            revision_after_last_round = kv.mod_revision;
            println!(
                "round {round}: {} acknowledged creates and {} counters intact at revision {revision}",
                acked.creates.len(),
                acked.counters.len()
            );
        });
    }
}
