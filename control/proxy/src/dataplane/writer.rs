//! The one owner of the load-balancer maps: typed handles, reading the actual state back,
//! applying a plan, conntrack/affinity garbage collection, and the [`Writer`] task.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    sys::SyscallError,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use xkube_common::lb::{
    AFFINITY, AffinityKey, AffinityValue, BACKENDS, Backend, CONNTRACK, CtKey, CtValue,
    FRONTEND_FILTER, FrontendFilterWords, IPPROTO_TCP, LOCAL_ADDRS, MAGLEV, MAGLEV_TABLE_SIZE,
    MaglevKey, NODE_CONFIG, NodeConfig, REVNAT, RevNat, SERVICE_COUNTERS, SERVICES, SOCK_REVNAT,
    SVC_F_AFFINITY, ServiceCounters, ServiceKey, ServiceValue, SockRevNatKey, SockRevNatValue,
    ct_closed,
};

use super::{
    desired::{Desired, DesiredState},
    plan::{Op, plan},
};
use crate::error::{Error, Result};

/// Every map of the load-balancer datapath, by name.
pub use xkube_common::lb::MAP_NAMES;

/// Typed handles on the load-balancer maps. LRU hash maps use aya's `HashMap` type too (it
/// accepts both `BPF_MAP_TYPE_HASH` and `BPF_MAP_TYPE_LRU_HASH`).
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub revnat: HashMap<MapData, u32, RevNat>,
    pub local_addrs: HashMap<MapData, u32, u32>,
    pub node_config: Array<MapData, NodeConfig>,
    /// One entry: the whole filter.
    pub frontend_filter: Array<MapData, FrontendFilterWords>,
    pub maglev: HashMap<MapData, MaglevKey, u32>,
    /// LRU.
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    /// LRU.
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    /// LRU.
    pub sock_revnat: HashMap<MapData, SockRevNatKey, SockRevNatValue>,
    pub counters: PerCpuArray<MapData, ServiceCounters>,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps")
            .field("names", &MAP_NAMES)
            .finish_non_exhaustive()
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> Error {
    move |source| Error::Map { name, source }
}

impl Maps {
    /// Takes the maps out of a loaded object (the programs keep their references).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|name| ebpf.take_map(name).ok_or(Error::MissingMap(name)))
    }

    /// Opens the maps pinned as `<pin_dir>/<MAP NAME>`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self> {
        Self::build(|name| {
            let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
            Map::from_map_data(data).map_err(map_err(name))
        })
    }

    fn build(mut take: impl FnMut(&'static str) -> Result<Map>) -> Result<Self> {
        macro_rules! typed {
            ($name:expr) => {{
                let name: &'static str = $name;
                take(name)?.try_into().map_err(map_err(name))?
            }};
        }
        Ok(Self {
            services: typed!(SERVICES),
            backends: typed!(BACKENDS),
            revnat: typed!(REVNAT),
            local_addrs: typed!(LOCAL_ADDRS),
            node_config: typed!(NODE_CONFIG),
            frontend_filter: typed!(FRONTEND_FILTER),
            maglev: typed!(MAGLEV),
            conntrack: typed!(CONNTRACK),
            affinity: typed!(AFFINITY),
            sock_revnat: typed!(SOCK_REVNAT),
            counters: typed!(SERVICE_COUNTERS),
        })
    }
}

/// Reads the owned maps back into a [`DesiredState`] (the actual state).
pub fn read_actual(maps: &Maps) -> Result<DesiredState> {
    let mut s = DesiredState::default();
    for e in maps.services.iter() {
        let (k, v) = e.map_err(map_err(SERVICES))?;
        s.services.insert(k, v);
    }
    for e in maps.backends.iter() {
        let (k, v) = e.map_err(map_err(BACKENDS))?;
        s.backends.insert(k, v);
    }
    for e in maps.revnat.iter() {
        let (k, v) = e.map_err(map_err(REVNAT))?;
        match u16::try_from(k) {
            Ok(id) => {
                s.revnat.insert(id, v);
            }
            Err(_) => warn!(
                key = k,
                "{REVNAT} entry beyond the 16-bit service ids; ignored"
            ),
        }
    }
    for e in maps.local_addrs.iter() {
        let (k, v) = e.map_err(map_err(LOCAL_ADDRS))?;
        s.local_addrs.insert(k, v);
    }
    for e in maps.maglev.iter() {
        let (k, v) = e.map_err(map_err(MAGLEV))?;
        // A table of this program is MAGLEV_TABLE_SIZE long; tolerate a somewhat larger one
        // (an older object's pinned map) but never size a vector from a wild index.
        if k.index > u32::from(u16::MAX) {
            warn!(
                service = k.rev_nat_id,
                index = k.index,
                "{MAGLEV} index out of range; ignored"
            );
            continue;
        }
        let t = s
            .maglev
            .entry(k.rev_nat_id)
            .or_insert_with(|| vec![0; MAGLEV_TABLE_SIZE as usize]);
        let i = k.index as usize;
        if i >= t.len() {
            t.resize(i + 1, 0);
        }
        t[i] = v;
    }
    s.node_config = maps.node_config.get(&0, 0).map_err(map_err(NODE_CONFIG))?;
    let words: FrontendFilterWords = maps
        .frontend_filter
        .get(&0, 0)
        .map_err(map_err(FRONTEND_FILTER))?;
    s.frontend_filter = words
        .iter()
        .enumerate()
        .filter(|(_, w)| **w != 0)
        .filter_map(|(i, w)| Some((u32::try_from(i).ok()?, *w)))
        .collect();
    Ok(s)
}

/// Writes filter words into the filter's one entry (read, modified, written whole).
fn set_filter_words(maps: &mut Maps, ops: &[Op]) -> Result<()> {
    let mut words: Box<FrontendFilterWords> = Box::new(
        maps.frontend_filter
            .get(&0, 0)
            .map_err(map_err(FRONTEND_FILTER))?,
    );
    for op in ops {
        if let Op::SetFilterWord { index, bits } = op
            && let Some(w) = words.get_mut(*index as usize)
        {
            *w = *bits;
        }
    }
    maps.frontend_filter
        .set(0, *words, 0)
        .map_err(map_err(FRONTEND_FILTER))
}

/// What an [`apply`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub upserts: usize,
    pub deletes: usize,
    /// Deletes of entries that were already gone (harmless).
    pub already_gone: usize,
}

fn is_enoent(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound)
        || matches!(e, MapError::SyscallError(SyscallError { io_error, .. })
            if io_error.raw_os_error() == Some(nix::libc::ENOENT))
}

/// Applies `ops` in order. Stops at the first failure (the caller re-reads the actual state).
pub fn apply(maps: &mut Maps, ops: &[Op]) -> Result<ApplyStats> {
    let mut st = ApplyStats::default();
    let mut rest = ops;
    while let Some(op) = rest.first() {
        // A run of filter words (a plan has at most two) is one read and one write of the
        // filter's single entry.
        let run = rest
            .iter()
            .take_while(|o| matches!(o, Op::SetFilterWord { .. }))
            .count();
        if run > 0 {
            set_filter_words(maps, &rest[..run])?;
            st.upserts += run;
            rest = &rest[run..];
            continue;
        }
        rest = &rest[1..];
        let (name, res): (&'static str, Result<(), MapError>) = match op {
            Op::SetNodeConfig(c) => (NODE_CONFIG, maps.node_config.set(0, c, 0)),
            // Consumed above as a run; never reached.
            Op::SetFilterWord { .. } => continue,
            Op::UpsertLocalAddr { addr, flags } => {
                (LOCAL_ADDRS, maps.local_addrs.insert(addr, flags, 0))
            }
            Op::DeleteLocalAddr { addr } => (LOCAL_ADDRS, maps.local_addrs.remove(addr)),
            Op::UpsertBackend { id, backend } => (BACKENDS, maps.backends.insert(id, backend, 0)),
            Op::DeleteBackend { id } => (BACKENDS, maps.backends.remove(id)),
            Op::UpsertRevNat { id, revnat } => {
                (REVNAT, maps.revnat.insert(u32::from(*id), revnat, 0))
            }
            Op::DeleteRevNat { id } => (REVNAT, maps.revnat.remove(&u32::from(*id))),
            Op::UpsertMaglev { key, backend_id } => {
                (MAGLEV, maps.maglev.insert(key, backend_id, 0))
            }
            Op::DeleteMaglev { key } => (MAGLEV, maps.maglev.remove(key)),
            Op::UpsertService { key, value } => (SERVICES, maps.services.insert(key, value, 0)),
            Op::DeleteService { key } => (SERVICES, maps.services.remove(key)),
        };
        match res {
            Ok(()) if op.is_delete() => st.deletes += 1,
            Ok(()) => st.upserts += 1,
            Err(e) if op.is_delete() && is_enoent(&e) => st.already_gone += 1,
            Err(source) => return Err(Error::Map { name, source }),
        }
    }
    Ok(st)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn ktime_now_ns() -> Result<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(Error::Clock)?;
    // CLOCK_MONOTONIC is never negative.
    Ok(u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0))
}

/// How long a conntrack entry may stay idle before the GC removes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleTimeouts {
    pub tcp: Duration,
    /// TCP flows the datapath saw reset or closed from both sides.
    pub tcp_closed: Duration,
    /// UDP (and anything that is not TCP).
    pub udp: Duration,
}

impl Default for IdleTimeouts {
    /// TCP 6 hours (Cilium's established timeout); closed TCP 60 seconds, the backend's
    /// TIME_WAIT, during which the datapath may keep a closed flow's SNAT port from other
    /// clients (`CT_SNAT_REUSE_AFTER_TIME_WAIT_NS`); UDP 5 minutes.
    fn default() -> Self {
        Self {
            tcp: Duration::from_secs(6 * 3600),
            tcp_closed: Duration::from_nanos(xkube_common::lb::CT_SNAT_REUSE_AFTER_TIME_WAIT_NS),
            udp: Duration::from_secs(300),
        }
    }
}

/// What a [`gc`] pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub conntrack_scanned: usize,
    pub conntrack_idle: usize,
    pub conntrack_stale_backend: usize,
    pub affinity_scanned: usize,
    pub affinity_removed: usize,
    pub sock_revnat_scanned: usize,
    pub sock_revnat_removed: usize,
}

fn elapsed(now_ns: u64, then_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(then_ns))
}

/// Removes, at `now_ns` (`CLOCK_MONOTONIC`, see [`ktime_now_ns`]):
/// - conntrack entries idle longer than `idle` (shorter for closed TCP flows), or whose backend id no longer exists or no
///   longer belongs to the entry's service;
/// - affinity entries older than their service's timeout, of services without affinity, or
///   whose backend is gone;
/// - socket reverse-NAT entries whose backend (address, port, service) is gone.
///
/// Keys are collected first and deleted afterwards (deleting while walking a hash map can
/// restart the walk); entries the datapath refreshed in between are re-checked.
#[tracing::instrument(level = "debug", skip_all)]
pub fn gc(maps: &mut Maps, now_ns: u64, idle: &IdleTimeouts) -> Result<GcStats> {
    let mut st = GcStats::default();
    let mut backends: StdHashMap<u32, Backend> = StdHashMap::new();
    for e in maps.backends.iter() {
        let (id, b) = e.map_err(map_err(BACKENDS))?;
        backends.insert(id, b);
    }
    let backend_ok = |id: u32, rev_nat_id: u16| {
        backends
            .get(&id)
            .is_some_and(|b| b.rev_nat_id == rev_nat_id)
    };

    // Conntrack.
    let ct_expired = |k: &CtKey, v: &CtValue| -> (bool, bool) {
        let timeout = match k.proto {
            IPPROTO_TCP if ct_closed(v.flags) => idle.tcp_closed,
            IPPROTO_TCP => idle.tcp,
            _ => idle.udp,
        };
        let idle_out = elapsed(now_ns, v.last_seen) > timeout;
        let stale = v.backend_id != 0 && !backend_ok(v.backend_id, v.rev_nat_id);
        (idle_out, stale)
    };
    let mut doomed = Vec::new();
    for e in maps.conntrack.iter() {
        let (k, v) = match e {
            Ok(kv) => kv,
            // An LRU entry evicted between the key walk and the lookup.
            Err(MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(Error::Map {
                    name: CONNTRACK,
                    source,
                });
            }
        };
        st.conntrack_scanned += 1;
        let (idle_out, stale) = ct_expired(&k, &v);
        if idle_out || stale {
            doomed.push(k);
        }
    }
    for k in doomed {
        // Re-check: the datapath may have refreshed the entry since the walk.
        let Ok(v) = maps.conntrack.get(&k, 0) else {
            continue;
        };
        let (idle_out, stale) = ct_expired(&k, &v);
        if !(idle_out || stale) {
            continue;
        }
        match maps.conntrack.remove(&k) {
            Ok(()) if stale => st.conntrack_stale_backend += 1,
            Ok(()) => st.conntrack_idle += 1,
            Err(e) if is_enoent(&e) => {}
            Err(source) => {
                return Err(Error::Map {
                    name: CONNTRACK,
                    source,
                });
            }
        }
    }

    // Affinity: the timeout is the service's (any frontend of the service id carries it).
    let mut timeouts: StdHashMap<u16, u32> = StdHashMap::new();
    for e in maps.services.iter() {
        let (k, v) = e.map_err(map_err(SERVICES))?;
        if k.slot == 0 && v.flags & SVC_F_AFFINITY != 0 {
            timeouts.insert(v.rev_nat_id, v.affinity_timeout);
        }
    }
    let aff_expired = |k: &AffinityKey, v: &AffinityValue| match timeouts.get(&k.rev_nat_id) {
        None => true,
        Some(t) => {
            elapsed(now_ns, v.last_used) > Duration::from_secs(u64::from(*t))
                || !backend_ok(v.backend_id, k.rev_nat_id)
        }
    };
    let mut doomed = Vec::new();
    for e in maps.affinity.iter() {
        let (k, v) = match e {
            Ok(kv) => kv,
            Err(MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(Error::Map {
                    name: AFFINITY,
                    source,
                });
            }
        };
        st.affinity_scanned += 1;
        if aff_expired(&k, &v) {
            doomed.push(k);
        }
    }
    for k in doomed {
        let Ok(v) = maps.affinity.get(&k, 0) else {
            continue;
        };
        if !aff_expired(&k, &v) {
            continue;
        }
        match maps.affinity.remove(&k) {
            Ok(()) => st.affinity_removed += 1,
            Err(e) if is_enoent(&e) => {}
            Err(source) => {
                return Err(Error::Map {
                    name: AFFINITY,
                    source,
                });
            }
        }
    }

    // Socket reverse NAT: the key names the backend address and port, the value the service.
    let live: BTreeSet<(u16, u32, u16)> = backends
        .values()
        .map(|b| (b.rev_nat_id, b.addr, b.port))
        .collect();
    let mut doomed = Vec::new();
    for e in maps.sock_revnat.iter() {
        let (k, v) = match e {
            Ok(kv) => kv,
            Err(MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(Error::Map {
                    name: SOCK_REVNAT,
                    source,
                });
            }
        };
        st.sock_revnat_scanned += 1;
        if !live.contains(&(v.rev_nat_id, k.addr, k.port)) {
            doomed.push(k);
        }
    }
    for k in doomed {
        match maps.sock_revnat.remove(&k) {
            Ok(()) => st.sock_revnat_removed += 1,
            Err(e) if is_enoent(&e) => {}
            Err(source) => {
                return Err(Error::Map {
                    name: SOCK_REVNAT,
                    source,
                });
            }
        }
    }
    Ok(st)
}

/// Per-service counters summed over CPUs, by service id (services with all-zero counters left
/// out).
pub fn read_counters(
    maps: &Maps,
    ids: impl IntoIterator<Item = u16>,
) -> Result<BTreeMap<u16, ServiceCounters>> {
    let mut out = BTreeMap::new();
    for id in ids {
        let per_cpu = maps
            .counters
            .get(&u32::from(id), 0)
            .map_err(map_err(SERVICE_COUNTERS))?;
        let mut sum = ServiceCounters::default();
        for c in per_cpu.iter() {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            sum.connections += c.connections;
            sum.rejected += c.rejected;
        }
        if sum != ServiceCounters::default() {
            out.insert(id, sum);
        }
    }
    Ok(out)
}

/// Diffs `desired` against `written`, applies, and updates `written` to what the maps now hold
/// (`desired` on success, the re-read actual state on failure).
#[tracing::instrument(level = "debug", skip_all)]
pub fn sync(
    maps: &mut Maps,
    written: &mut Arc<DesiredState>,
    desired: &Arc<DesiredState>,
) -> Result<SyncReport> {
    let start = Instant::now();
    let ops = plan(written, desired);
    let planned = start.elapsed();
    match apply(maps, &ops) {
        Ok(stats) => {
            *written = Arc::clone(desired);
            Ok(SyncReport {
                ops: ops.len(),
                stats,
                plan: planned,
                total: start.elapsed(),
            })
        }
        Err(e) => {
            match read_actual(maps) {
                Ok(actual) => *written = Arc::new(actual),
                Err(re) => warn!(error = %re, "re-reading the maps after a failed apply"),
            }
            Err(e)
        }
    }
}

/// One successful sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub ops: usize,
    pub stats: ApplyStats,
    /// Time to compute the plan.
    pub plan: Duration,
    /// Time to plan and apply: the sync latency.
    pub total: Duration,
}

/// What the writer task has done so far (published on a watch channel).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterStatus {
    /// The [`Desired::generation`] now in the maps (0: the state found at start).
    pub applied_generation: u64,
    pub syncs: u64,
    pub errors: u64,
    pub last_sync: Option<SyncReport>,
    pub last_error: Option<String>,
    pub gc_runs: u64,
    pub last_gc: Option<GcStats>,
}

/// Writer task settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    pub gc_interval: Duration,
    pub idle: IdleTimeouts,
    /// First retry delay after a failed apply; doubles up to `max_retry`.
    pub retry: Duration,
    pub max_retry: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            gc_interval: Duration::from_secs(30),
            idle: IdleTimeouts::default(),
            retry: Duration::from_millis(100),
            max_retry: Duration::from_secs(30),
        }
    }
}

/// The single owner of the maps: applies the latest desired state from a watch channel (only
/// the difference against what it last wrote) and runs the conntrack GC.
///
/// Start-up reads the actual state from the maps (pinned maps survive an agent restart), so
/// the caller can rebuild its [`super::desired::Ids`] from [`Writer::actual`] and the first
/// sync writes nothing for unchanged objects. Until the first desired state arrives (`None` in
/// the channel) nothing is written, so a restart never wipes a working dataplane: send the first
/// state only once the Service and Endpoints caches have synced (a state computed from a partial
/// list would remove the services not listed yet).
#[derive(Debug)]
pub struct Writer {
    maps: Maps,
    written: Arc<DesiredState>,
    config: WriterConfig,
    status: watch::Sender<WriterStatus>,
}

impl Writer {
    /// Takes ownership of `maps` and reads their actual state.
    pub fn new(maps: Maps, config: WriterConfig) -> Result<Self> {
        let actual = read_actual(&maps)?;
        info!(
            services = actual.services.len(),
            backends = actual.backends.len(),
            "dataplane writer: actual state read"
        );
        let (status, _) = watch::channel(WriterStatus::default());
        Ok(Self {
            maps,
            written: Arc::new(actual),
            config,
            status,
        })
    }

    /// The state the maps held at start (then: what was last written).
    pub fn actual(&self) -> &DesiredState {
        &self.written
    }

    /// Status updates: applied generation, sync latency, GC results.
    pub fn subscribe(&self) -> watch::Receiver<WriterStatus> {
        self.status.subscribe()
    }

    /// Runs until the desired-state sender is dropped; returns the maps (the dataplane keeps
    /// running with the last written state). Map I/O runs on the blocking pool.
    pub async fn run(self, mut desired: watch::Receiver<Option<Arc<Desired>>>) -> Result<Maps> {
        let Self {
            maps,
            mut written,
            config,
            status,
        } = self;
        let mut maps = Some(maps);
        let mut gc_tick = tokio::time::interval(config.gc_interval);
        gc_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        gc_tick.reset(); // the first GC one interval after start
        let mut pending: Option<Arc<Desired>> = desired.borrow_and_update().clone();
        let mut retry_delay = config.retry;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if let Some(want) = pending.clone()
                && retry_at.is_none_or(|t| t <= tokio::time::Instant::now())
            {
                let Some(mut m) = maps.take() else {
                    return Err(Error::WriterLostMaps);
                };
                let mut w = Arc::clone(&written);
                let state = Arc::clone(&want.state);
                let (m, w, res) = tokio::task::spawn_blocking(move || {
                    let res = sync(&mut m, &mut w, &state);
                    (m, w, res)
                })
                .await
                .map_err(Error::Join)?;
                maps = Some(m);
                written = w;
                match res {
                    Ok(report) => {
                        debug!(
                            generation = want.generation,
                            ops = report.ops,
                            latency_us = report.total.as_micros() as u64,
                            "dataplane synced"
                        );
                        status.send_modify(|s| {
                            s.applied_generation = want.generation;
                            s.syncs += 1;
                            s.last_sync = Some(report);
                        });
                        pending = None;
                        retry_at = None;
                        retry_delay = config.retry;
                    }
                    Err(e) => {
                        warn!(error = %e, retry_in_ms = retry_delay.as_millis() as u64, "dataplane sync failed");
                        status.send_modify(|s| {
                            s.errors += 1;
                            s.last_error = Some(e.to_string());
                        });
                        retry_at = Some(tokio::time::Instant::now() + retry_delay);
                        retry_delay = (retry_delay * 2).min(config.max_retry);
                    }
                }
                continue;
            }
            let retry_sleep = async {
                match retry_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if let Some(d) = desired.borrow_and_update().clone() {
                        pending = Some(d);
                        // A new state is worth trying at once.
                        retry_at = None;
                    }
                }
                _ = retry_sleep => {
                    retry_at = None;
                }
                _ = gc_tick.tick() => {
                    let Some(mut m) = maps.take() else {
                        return Err(Error::WriterLostMaps);
                    };
                    let idle = config.idle;
                    let (m, res) = tokio::task::spawn_blocking(move || {
                        let res = ktime_now_ns().and_then(|now| gc(&mut m, now, &idle));
                        (m, res)
                    })
                    .await
                    .map_err(Error::Join)?;
                    maps = Some(m);
                    match res {
                        Ok(st) => {
                            debug!(?st, "conntrack GC");
                            status.send_modify(|s| {
                                s.gc_runs += 1;
                                s.last_gc = Some(st);
                            });
                        }
                        Err(e) => warn!(error = %e, "conntrack GC failed"),
                    }
                }
            }
        }
        maps.ok_or(Error::WriterLostMaps)
    }
}
