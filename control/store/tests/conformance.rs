//! The store conformance suite against every backend. The etcd cases start a real `etcd`
//! process each (binary from the Debian package etcd-server; `cargo xtask setup`).

mod memory {
    xkube_store::conformance_suite!(xkube_store::testing::TestStore::memory());
}

mod embedded {
    xkube_store::conformance_suite!(xkube_store::testing::TestStore::embedded());
}

mod etcd {
    xkube_store::conformance_suite!(xkube_store::testing::TestStore::etcd());
}
