//! Test support (feature `testing`): stores ready for a test, a real `etcd` process guard and
//! the conformance suite every backend must pass.
//!
//! ```text
//! mod memory {
//!     xkube_store::conformance_suite!(xkube_store::testing::TestStore::memory());
//! }
//! ```

pub mod conformance;
mod etcd_server;

use std::sync::Arc;

pub use etcd_server::{EtcdServer, free_port};

use crate::{EmbeddedStore, EtcdStore, MemoryStore, Store};

/// A store for one test, with whatever must outlive it (a temp dir, an etcd process).
/// Dropping it drops the store first, then removes the dir / kills etcd.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    dir: Option<tempfile::TempDir>,
    etcd: Option<EtcdServer>,
}

impl TestStore {
    pub async fn memory() -> Self {
        TestStore {
            store: Arc::new(MemoryStore::new()),
            dir: None,
            etcd: None,
        }
    }

    /// An embedded store in a fresh temp dir.
    pub async fn embedded() -> Self {
        let dir = tempfile::tempdir().expect("create a temp dir for the embedded store");
        let store = EmbeddedStore::open(dir.path())
            .await
            .unwrap_or_else(|e| panic!("open embedded store in {}: {e:#}", dir.path().display()));
        TestStore {
            store: Arc::new(store),
            dir: Some(dir),
            etcd: None,
        }
    }

    /// A store on a fresh, real `etcd` process (see [`EtcdServer`]).
    pub async fn etcd() -> Self {
        let etcd = EtcdServer::start().await;
        let store = EtcdStore::connect(&[etcd.endpoint().to_owned()], "/xkube-test")
            .await
            .unwrap_or_else(|e| panic!("connect to etcd at {}: {e:#}", etcd.endpoint()));
        TestStore {
            store: Arc::new(store),
            dir: None,
            etcd: Some(etcd),
        }
    }

    /// The temp dir of an embedded store.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// The etcd server of an etcd store.
    pub fn etcd_server(&self) -> Option<&EtcdServer> {
        self.etcd.as_ref()
    }
}

/// Generates one `#[tokio::test]` per conformance case, each on a fresh store made by the
/// given expression (an `async` constructor such as `TestStore::memory()`). The calling crate
/// needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_suite {
    ($make:expr) => {
        $crate::conformance_suite!(@cases $make;
            create_then_get,
            list_is_sorted_and_prefix_isolated,
            create_existing_is_already_exists,
            update_is_compare_and_swap,
            conditional_delete,
            revisions_strictly_increase,
            values_are_opaque_bytes,
            watch_from_zero_replays_history,
            watch_from_mid_revision,
            watch_live_events,
            watch_filters_by_prefix,
            compaction_makes_old_revisions_gone,
            concurrent_writers_lose_nothing,
            concurrent_cas_increments_are_not_lost,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store = $make.await;
                $crate::testing::conformance::$case(&*store.store).await;
            }
        )*
    };
}
