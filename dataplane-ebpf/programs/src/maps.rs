//! The load-balancer maps. Each static is named exactly like its constant in
//! `xkube_common::lb` (userspace looks maps up by those constants; a test checks every one).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use xkube_common::lb::{
    AFFINITY_MAX, AffinityKey, AffinityValue, BACKENDS_MAX, Backend, CONNTRACK_MAX, CtKey, CtValue,
    FrontendFilterWords, LOCAL_ADDRS_MAX, MAGLEV_MAX, MaglevKey, NodeConfig, REVNAT_MAX, RevNat,
    SERVICE_COUNTERS_LEN, SERVICES_MAX, SOCK_REVNAT_MAX, ServiceCounters, ServiceKey, ServiceValue,
    SockRevNatKey, SockRevNatValue,
};

#[map]
pub static XKUBE_SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(SERVICES_MAX, 0);
#[map]
pub static XKUBE_BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(BACKENDS_MAX, 0);
#[map]
pub static XKUBE_REVNAT: HashMap<u32, RevNat> = HashMap::with_max_entries(REVNAT_MAX, 0);
#[map]
pub static XKUBE_LOCAL_ADDRS: HashMap<u32, u32> = HashMap::with_max_entries(LOCAL_ADDRS_MAX, 0);
#[map]
pub static XKUBE_NODE_CONFIG: Array<NodeConfig> = Array::with_max_entries(1, 0);
#[map]
pub static XKUBE_FRONTEND_FILTER: Array<FrontendFilterWords> = Array::with_max_entries(1, 0);
#[map]
pub static XKUBE_SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::with_max_entries(SOCK_REVNAT_MAX, 0);
#[map]
pub static XKUBE_CONNTRACK: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(CONNTRACK_MAX, 0);
#[map]
pub static XKUBE_AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(AFFINITY_MAX, 0);
#[map]
pub static XKUBE_MAGLEV: HashMap<MaglevKey, u32> = HashMap::with_max_entries(MAGLEV_MAX, 0);
#[map]
pub static XKUBE_SERVICE_COUNTERS: PerCpuArray<ServiceCounters> =
    PerCpuArray::with_max_entries(SERVICE_COUNTERS_LEN, 0);
