//! The ordered difference between two map states.
//!
//! [`plan`] is pure. Its order guarantees that a datapath reading the maps between any two
//! operations never sees a half-written service (DESIGN.md section 5):
//!
//! 0. frontend filter bits of new frontend addresses (before the config enables the filter);
//! 1. node config, new local addresses;
//! 2. backends (new or changed);
//! 3. reverse NAT entries (before the first frontend of their service);
//! 4. Maglev entries (before a frontend that enables `SVC_F_MAGLEV`; tables are always full, so
//!    a rewritten entry never points at a removed backend);
//! 5. backend slots (`slot >= 1`), so a count never exceeds the written slots;
//! 6. frontends (slot 0: new count, flags), internal scope before default scope (a default
//!    frontend with `SVC_F_TWO_SCOPES` makes internal traffic look its internal copy up);
//!
//! then the removals, in reverse:
//!
//! 7. frontends no longer wanted, default scope before internal scope;
//! 8. slots beyond the new counts and of removed frontends;
//! 9. Maglev entries (after the frontend that used them);
//! 10. reverse NAT entries (after the last frontend of their service);
//! 11. backends no longer referenced;
//! 12. local addresses;
//! 13. frontend filter bits of addresses no frontend uses any more.
//!
//! Identical states give an empty plan.

use std::collections::BTreeMap;

use xkube_common::lb::{
    Backend, MaglevKey, NodeConfig, RevNat, SCOPE_DEFAULT, ServiceKey, ServiceValue,
};

use super::desired::DesiredState;

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    SetNodeConfig(NodeConfig),
    /// One word of the frontend filter (array entries are overwritten, never deleted).
    SetFilterWord {
        index: u32,
        bits: u64,
    },
    UpsertLocalAddr {
        addr: u32,
        flags: u32,
    },
    DeleteLocalAddr {
        addr: u32,
    },
    UpsertBackend {
        id: u32,
        backend: Backend,
    },
    DeleteBackend {
        id: u32,
    },
    UpsertRevNat {
        id: u16,
        revnat: RevNat,
    },
    DeleteRevNat {
        id: u16,
    },
    UpsertMaglev {
        key: MaglevKey,
        backend_id: u32,
    },
    DeleteMaglev {
        key: MaglevKey,
    },
    UpsertService {
        key: ServiceKey,
        value: ServiceValue,
    },
    DeleteService {
        key: ServiceKey,
    },
}

impl Op {
    /// Whether the op removes an entry.
    pub fn is_delete(&self) -> bool {
        matches!(
            self,
            Op::DeleteLocalAddr { .. }
                | Op::DeleteBackend { .. }
                | Op::DeleteRevNat { .. }
                | Op::DeleteMaglev { .. }
                | Op::DeleteService { .. }
        )
    }
}

/// Upserts for keys whose value differs, deletes for keys gone from `desired`: one merge walk
/// over both sorted maps.
fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    actual: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    let mut a = actual.iter().peekable();
    let mut d = desired.iter().peekable();
    loop {
        match (a.peek(), d.peek()) {
            (None, None) => break,
            (Some((ak, _)), None) => {
                deletes.push(**ak);
                a.next();
            }
            (None, Some((dk, dv))) => {
                upserts.push((**dk, **dv));
                d.next();
            }
            (Some((ak, av)), Some((dk, dv))) => match ak.cmp(dk) {
                std::cmp::Ordering::Less => {
                    deletes.push(**ak);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    upserts.push((**dk, **dv));
                    d.next();
                }
                std::cmp::Ordering::Equal => {
                    if av != dv {
                        upserts.push((**dk, **dv));
                    }
                    a.next();
                    d.next();
                }
            },
        }
    }
    (upserts, deletes)
}

fn maglev_key(rev_nat_id: u16, index: usize) -> MaglevKey {
    MaglevKey {
        rev_nat_id,
        _pad: 0,
        // Tables are MAGLEV_TABLE_SIZE long (a u32); a longer actual table cannot come from
        // the map, whose index is a u32.
        index: u32::try_from(index).unwrap_or(u32::MAX),
    }
}

/// The operations turning `actual` into `desired`, in a reader-safe order (module docs).
pub fn plan(actual: &DesiredState, desired: &DesiredState) -> Vec<Op> {
    let mut ops = Vec::new();

    // 0. The filter bits of new frontends, before the config that enables the filter and
    //    before any frontend; bits of removed frontends are cleared last (13.).
    let (filter_set, filter_clear) =
        super::filter::filter_ops(&actual.frontend_filter, &desired.frontend_filter);
    ops.extend(
        filter_set
            .into_iter()
            .map(|(index, bits)| Op::SetFilterWord { index, bits }),
    );

    // 1. Node facts.
    if actual.node_config != desired.node_config {
        ops.push(Op::SetNodeConfig(desired.node_config));
    }
    let (addr_up, addr_del) = diff(&actual.local_addrs, &desired.local_addrs);
    ops.extend(
        addr_up
            .into_iter()
            .map(|(addr, flags)| Op::UpsertLocalAddr { addr, flags }),
    );

    // 2. Backends.
    let (be_up, be_del) = diff(&actual.backends, &desired.backends);
    ops.extend(
        be_up
            .into_iter()
            .map(|(id, backend)| Op::UpsertBackend { id, backend }),
    );

    // 3. Reverse NAT.
    let (rn_up, rn_del) = diff(&actual.revnat, &desired.revnat);
    ops.extend(
        rn_up
            .into_iter()
            .map(|(id, revnat)| Op::UpsertRevNat { id, revnat }),
    );

    // 4. Maglev entries (0 = absent).
    let empty = Vec::new();
    let mut mg_del = Vec::new();
    for (id, table) in &desired.maglev {
        let old = actual.maglev.get(id).unwrap_or(&empty);
        for (i, backend_id) in table.iter().enumerate() {
            let before = old.get(i).copied().unwrap_or(0);
            if *backend_id != 0 && *backend_id != before {
                ops.push(Op::UpsertMaglev {
                    key: maglev_key(*id, i),
                    backend_id: *backend_id,
                });
            } else if *backend_id == 0 && before != 0 {
                mg_del.push(maglev_key(*id, i));
            }
        }
        for (i, before) in old.iter().enumerate().skip(table.len()) {
            if *before != 0 {
                mg_del.push(maglev_key(*id, i));
            }
        }
    }
    for (id, old) in &actual.maglev {
        if !desired.maglev.contains_key(id) {
            for (i, before) in old.iter().enumerate() {
                if *before != 0 {
                    mg_del.push(maglev_key(*id, i));
                }
            }
        }
    }

    // 5. and 6. Slots, then frontends (internal scope first).
    let (svc_up, svc_del) = diff(&actual.services, &desired.services);
    let (frontends_up, slots_up): (Vec<_>, Vec<_>) =
        svc_up.into_iter().partition(|(k, _)| k.slot == 0);
    ops.extend(
        slots_up
            .into_iter()
            .map(|(key, value)| Op::UpsertService { key, value }),
    );
    let (fe_default, fe_internal): (Vec<_>, Vec<_>) = frontends_up
        .into_iter()
        .partition(|(k, _)| k.scope == SCOPE_DEFAULT);
    ops.extend(
        fe_internal
            .into_iter()
            .chain(fe_default)
            .map(|(key, value)| Op::UpsertService { key, value }),
    );

    // 7. and 8. Removed frontends (default scope first), then removed slots.
    let (frontends_del, slots_del): (Vec<_>, Vec<_>) =
        svc_del.into_iter().partition(|k| k.slot == 0);
    let (fd_default, fd_internal): (Vec<_>, Vec<_>) = frontends_del
        .into_iter()
        .partition(|k| k.scope == SCOPE_DEFAULT);
    ops.extend(
        fd_default
            .into_iter()
            .chain(fd_internal)
            .chain(slots_del)
            .map(|key| Op::DeleteService { key }),
    );

    // 9. - 12.
    ops.extend(mg_del.into_iter().map(|key| Op::DeleteMaglev { key }));
    ops.extend(rn_del.into_iter().map(|id| Op::DeleteRevNat { id }));
    ops.extend(be_del.into_iter().map(|id| Op::DeleteBackend { id }));
    ops.extend(
        addr_del
            .into_iter()
            .map(|addr| Op::DeleteLocalAddr { addr }),
    );
    ops.extend(
        filter_clear
            .into_iter()
            .map(|(index, bits)| Op::SetFilterWord { index, bits }),
    );
    ops
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use xkube_common::lb::{
        MAGLEV_TABLE_SIZE, NODE_F_FRONTEND_FILTER, SCOPE_INTERNAL, SVC_F_MAGLEV, SVC_F_TWO_SCOPES,
    };

    use super::*;
    use crate::dataplane::desired::{
        Ids, LB_ALGORITHM_ANNOTATION, desired,
        tests::{node, service, web, web_eps},
    };

    /// Applies `ops` to `state` like the kernel maps would, checking after every op that the
    /// datapath could not observe a half-written service.
    fn replay(state: &DesiredState, ops: &[Op]) -> DesiredState {
        let mut s = state.clone();
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::SetNodeConfig(c) => s.node_config = c,
                Op::SetFilterWord { index, bits } => {
                    if bits == 0 {
                        s.frontend_filter.remove(&index);
                    } else {
                        s.frontend_filter.insert(index, bits);
                    }
                }
                Op::UpsertLocalAddr { addr, flags } => {
                    s.local_addrs.insert(addr, flags);
                }
                Op::DeleteLocalAddr { addr } => {
                    s.local_addrs.remove(&addr);
                }
                Op::UpsertBackend { id, backend } => {
                    s.backends.insert(id, backend);
                }
                Op::DeleteBackend { id } => {
                    s.backends.remove(&id);
                }
                Op::UpsertRevNat { id, revnat } => {
                    s.revnat.insert(id, revnat);
                }
                Op::DeleteRevNat { id } => {
                    s.revnat.remove(&id);
                }
                Op::UpsertMaglev { key, backend_id } => {
                    let t = s.maglev.entry(key.rev_nat_id).or_default();
                    let i = key.index as usize;
                    if t.len() <= i {
                        t.resize(i + 1, 0);
                    }
                    t[i] = backend_id;
                }
                Op::DeleteMaglev { key } => {
                    if let Some(t) = s.maglev.get_mut(&key.rev_nat_id) {
                        if let Some(e) = t.get_mut(key.index as usize) {
                            *e = 0;
                        }
                        if t.iter().all(|e| *e == 0) {
                            s.maglev.remove(&key.rev_nat_id);
                        }
                    }
                }
                Op::UpsertService { key, value } => {
                    s.services.insert(key, value);
                }
                Op::DeleteService { key } => {
                    s.services.remove(&key);
                }
            }
            check_consistent(&s, &format!("after op {n} {op:?}"));
        }
        s
    }

    /// What the datapath relies on: every frontend's slots exist and point at backends of the
    /// right kind; its revnat exists; a Maglev frontend's table is full of existing backends;
    /// a two-scope default frontend has an internal copy.
    fn check_consistent(s: &DesiredState, when: &str) {
        if s.node_config.flags & NODE_F_FRONTEND_FILTER != 0 {
            for a in crate::dataplane::desired::frontend_addrs(s.services.keys()) {
                let bit = xkube_common::lb::frontend_filter_bit(a);
                let word = s.frontend_filter.get(&(bit >> 6)).copied().unwrap_or(0);
                assert!(
                    word & (1 << (bit & 63)) != 0,
                    "{when}: frontend address {a:#x} ruled out by the filter"
                );
            }
        }
        for (k, v) in s.services.iter().filter(|(k, _)| k.slot == 0) {
            for slot in 1..=v.count {
                let sv = s
                    .services
                    .get(&ServiceKey { slot, ..*k })
                    .unwrap_or_else(|| panic!("{when}: slot {slot} of {k:?} missing"));
                let b = s.backends.get(&sv.backend_id).unwrap_or_else(|| {
                    panic!(
                        "{when}: slot {slot} of {k:?} -> missing backend {}",
                        sv.backend_id
                    )
                });
                assert_eq!(
                    b.rev_nat_id, v.rev_nat_id,
                    "{when}: slot backend of another service"
                );
            }
            assert!(
                s.revnat.contains_key(&v.rev_nat_id),
                "{when}: frontend {k:?} without revnat {}",
                v.rev_nat_id
            );
            if v.flags & SVC_F_MAGLEV != 0 && v.count > 0 {
                let t = s
                    .maglev
                    .get(&v.rev_nat_id)
                    .unwrap_or_else(|| panic!("{when}: maglev frontend {k:?} without table"));
                assert_eq!(t.len(), MAGLEV_TABLE_SIZE as usize, "{when}: table size");
                for id in t {
                    assert!(
                        s.backends.contains_key(id),
                        "{when}: table -> missing backend {id}"
                    );
                }
            }
            if v.flags & SVC_F_TWO_SCOPES != 0 && k.scope == SCOPE_DEFAULT {
                assert!(
                    s.services.contains_key(&ServiceKey {
                        scope: SCOPE_INTERNAL,
                        ..*k
                    }),
                    "{when}: two-scope frontend {k:?} without internal copy"
                );
            }
        }
    }

    fn pos(ops: &[Op], f: impl Fn(&Op) -> bool) -> Vec<usize> {
        ops.iter()
            .enumerate()
            .filter(|(_, o)| f(o))
            .map(|(i, _)| i)
            .collect()
    }

    fn maglev(mut s: k8s_openapi::api::core::v1::Service) -> k8s_openapi::api::core::v1::Service {
        s.metadata.annotations = Some(BTreeMap::from([(
            LB_ALGORITHM_ANNOTATION.to_string(),
            "maglev".to_string(),
        )]));
        s
    }

    fn state(
        svcs: &[k8s_openapi::api::core::v1::Service],
        eps: &[k8s_openapi::api::core::v1::Endpoints],
        ids: &mut Ids,
    ) -> DesiredState {
        desired(svcs, eps, &node(), ids)
    }

    /// Checks that `plan(a, b)` replays consistently into exactly `b`, and returns it.
    fn checked_plan(a: &DesiredState, b: &DesiredState) -> Vec<Op> {
        let ops = plan(a, b);
        let end = replay(a, &ops);
        assert_eq!(&end, b, "replaying the plan reaches the desired state");
        ops
    }

    #[test]
    fn unchanged_state_gives_an_empty_plan() {
        let mut ids = Ids::new();
        let svcs = [web("web", "10.96.0.10"), maglev(web("m", "10.96.0.11"))];
        let eps = [
            web_eps("web", &["10.244.1.5"]),
            web_eps("m", &["10.244.1.6"]),
        ];
        let a = state(&svcs, &eps, &mut ids);
        let b = state(&svcs, &eps, &mut ids);
        assert!(plan(&a, &b).is_empty(), "no ops for an unchanged state");
    }

    #[test]
    fn new_service_writes_backends_then_revnat_then_slots_then_frontend() {
        let mut ids = Ids::new();
        let empty = state(&[], &[], &mut ids);
        let s = state(
            &[web("web", "10.96.0.10")],
            &[web_eps("web", &["10.244.1.5", "10.244.1.6"])],
            &mut ids,
        );
        let ops = checked_plan(&empty, &s);
        let backends = pos(&ops, |o| matches!(o, Op::UpsertBackend { .. }));
        let revnat = pos(&ops, |o| matches!(o, Op::UpsertRevNat { .. }));
        let slots = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, .. } if key.slot > 0),
        );
        let fe = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, .. } if key.slot == 0),
        );
        assert_eq!(
            (backends.len(), revnat.len(), slots.len(), fe.len()),
            (2, 1, 2, 1)
        );
        assert!(
            backends.iter().all(|b| *b < revnat[0]),
            "backends before revnat: {ops:#?}"
        );
        assert!(revnat[0] < slots[0], "revnat before slots");
        assert!(
            slots.iter().all(|s| *s < fe[0]),
            "slots before the frontend"
        );
    }

    #[test]
    fn growing_service_writes_new_slots_before_raising_count() {
        let mut ids = Ids::new();
        let svcs = [web("web", "10.96.0.10")];
        let a = state(&svcs, &[web_eps("web", &["10.244.1.5"])], &mut ids);
        let b = state(
            &svcs,
            &[web_eps("web", &["10.244.1.5", "10.244.1.6", "10.244.1.7"])],
            &mut ids,
        );
        let ops = checked_plan(&a, &b);
        let fe = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, value } if key.slot == 0 && value.count == 3),
        );
        let last_slot = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, .. } if key.slot > 0),
        );
        let last_backend = pos(&ops, |o| matches!(o, Op::UpsertBackend { .. }));
        assert_eq!(fe.len(), 1, "one frontend update: {ops:#?}");
        assert!(last_slot.iter().all(|s| *s < fe[0]), "slots before count");
        assert!(
            last_backend.iter().all(|b| *b < last_slot[0]),
            "backends before slots"
        );
        assert!(
            ops.iter().all(|o| !o.is_delete()),
            "growing deletes nothing"
        );
    }

    #[test]
    fn shrinking_service_lowers_count_before_deleting_slots() {
        let mut ids = Ids::new();
        let svcs = [web("web", "10.96.0.10")];
        let a = state(
            &svcs,
            &[web_eps("web", &["10.244.1.5", "10.244.1.6", "10.244.1.7"])],
            &mut ids,
        );
        let b = state(&svcs, &[web_eps("web", &["10.244.1.6"])], &mut ids);
        let ops = checked_plan(&a, &b);
        let fe = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, value } if key.slot == 0 && value.count == 1),
        );
        let slot_del = pos(
            &ops,
            |o| matches!(o, Op::DeleteService { key } if key.slot > 0),
        );
        let be_del = pos(&ops, |o| matches!(o, Op::DeleteBackend { .. }));
        assert_eq!(fe.len(), 1, "{ops:#?}");
        assert_eq!(slot_del.len(), 2, "slots 2 and 3 removed");
        assert_eq!(be_del.len(), 2, "two backends removed");
        assert!(
            slot_del.iter().all(|s| fe[0] < *s),
            "count lowered before slots go"
        );
        assert!(
            be_del.iter().all(|b| slot_del.iter().all(|s| s < b)),
            "slots go before their backends"
        );
    }

    #[test]
    fn removed_service_deletes_frontend_then_slots_then_revnat_then_backends() {
        let mut ids = Ids::new();
        let a = state(
            &[web("web", "10.96.0.10"), web("keep", "10.96.0.11")],
            &[
                web_eps("web", &["10.244.1.5", "10.244.1.6"]),
                web_eps("keep", &["10.244.1.9"]),
            ],
            &mut ids,
        );
        let b = state(
            &[web("keep", "10.96.0.11")],
            &[web_eps("keep", &["10.244.1.9"])],
            &mut ids,
        );
        let ops = checked_plan(&a, &b);
        let fe = pos(
            &ops,
            |o| matches!(o, Op::DeleteService { key } if key.slot == 0),
        );
        let slots = pos(
            &ops,
            |o| matches!(o, Op::DeleteService { key } if key.slot > 0),
        );
        let revnat = pos(&ops, |o| matches!(o, Op::DeleteRevNat { .. }));
        let backends = pos(&ops, |o| matches!(o, Op::DeleteBackend { .. }));
        assert_eq!(
            (fe.len(), slots.len(), revnat.len(), backends.len()),
            (1, 2, 1, 2),
            "{ops:#?}"
        );
        assert!(slots.iter().all(|s| fe[0] < *s), "frontend first");
        assert!(
            slots.iter().all(|s| *s < revnat[0]),
            "revnat after the last frontend"
        );
        assert!(backends.iter().all(|b| revnat[0] < *b), "backends last");
        // The removed ClusterIP's filter bit is cleared after everything else.
        assert!(
            matches!(ops.last(), Some(Op::SetFilterWord { .. })),
            "{ops:#?}"
        );
        assert_eq!(ops.len(), 7, "nothing touches the kept service");
    }

    #[test]
    fn revnat_is_written_before_the_first_frontend_and_removed_after_the_last() {
        let mut ids = Ids::new();
        let np = service(json!({
            "metadata": {"name": "np", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "externalIPs": ["198.18.5.1"],
                     "ports": [{"port": 80, "nodePort": 30080}]}
        }));
        let empty = state(&[], &[], &mut ids);
        let a = state(&[np], &[], &mut ids);
        let ops = checked_plan(&empty, &a);
        let rn = pos(&ops, |o| matches!(o, Op::UpsertRevNat { .. }));
        let fes = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, .. } if key.slot == 0),
        );
        assert_eq!(fes.len(), 3, "ClusterIP, NodePort, externalIP");
        assert!(
            fes.iter().all(|f| rn[0] < *f),
            "revnat before every frontend"
        );
        let gone = state(&[], &[], &mut ids);
        let ops = checked_plan(&a, &gone);
        let rn = pos(&ops, |o| matches!(o, Op::DeleteRevNat { .. }));
        let fes = pos(
            &ops,
            |o| matches!(o, Op::DeleteService { key } if key.slot == 0),
        );
        assert!(
            fes.iter().all(|f| *f < rn[0]),
            "revnat after every frontend"
        );
    }

    #[test]
    fn maglev_table_is_written_before_the_frontend_that_enables_it_and_removed_after() {
        let mut ids = Ids::new();
        let eps = [web_eps("web", &["10.244.1.5", "10.244.1.6"])];
        let random = state(&[web("web", "10.96.0.10")], &eps, &mut ids);
        let with = state(&[maglev(web("web", "10.96.0.10"))], &eps, &mut ids);
        let ops = checked_plan(&random, &with);
        let mg = pos(&ops, |o| matches!(o, Op::UpsertMaglev { .. }));
        let fe = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, value } if key.slot == 0 && value.flags & SVC_F_MAGLEV != 0),
        );
        assert_eq!(mg.len(), MAGLEV_TABLE_SIZE as usize, "a full table");
        assert_eq!(fe.len(), 1);
        assert!(mg.iter().all(|m| *m < fe[0]), "table before the flag");

        let ops = checked_plan(&with, &random);
        let mg = pos(&ops, |o| matches!(o, Op::DeleteMaglev { .. }));
        let fe = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, value } if key.slot == 0 && value.flags & SVC_F_MAGLEV == 0),
        );
        assert_eq!(
            mg.len(),
            MAGLEV_TABLE_SIZE as usize,
            "the whole table removed"
        );
        assert!(
            mg.iter().all(|m| fe[0] < *m),
            "flag cleared before the table goes"
        );
    }

    #[test]
    fn maglev_backend_change_rewrites_only_moved_entries_and_never_points_at_removed_backends() {
        let mut ids = Ids::new();
        let svcs = [maglev(web("web", "10.96.0.10"))];
        let a = state(
            &svcs,
            &[web_eps("web", &["10.244.1.5", "10.244.1.6", "10.244.1.7"])],
            &mut ids,
        );
        let b = state(
            &svcs,
            &[web_eps("web", &["10.244.1.5", "10.244.1.7"])],
            &mut ids,
        );
        // checked_plan replays and checks no table entry names a missing backend at any step.
        let ops = checked_plan(&a, &b);
        let rewritten = pos(&ops, |o| matches!(o, Op::UpsertMaglev { .. })).len();
        assert!(
            rewritten < MAGLEV_TABLE_SIZE as usize / 2,
            "about a third of the table moves, not all of it ({rewritten})"
        );
        assert!(pos(&ops, |o| matches!(o, Op::DeleteMaglev { .. })).is_empty());
    }

    #[test]
    fn partially_written_maglev_table_is_completed() {
        let mut ids = Ids::new();
        let s = state(
            &[maglev(web("web", "10.96.0.10"))],
            &[web_eps("web", &["10.244.1.5", "10.244.1.6"])],
            &mut ids,
        );
        let mut actual = s.clone();
        for t in actual.maglev.values_mut() {
            for e in t.iter_mut().skip(100) {
                *e = 0; // as read back after a crash part-way through the table
            }
        }
        let ops = plan(&actual, &s);
        assert_eq!(
            ops.len(),
            MAGLEV_TABLE_SIZE as usize - 100,
            "only the missing entries are written"
        );
        assert!(ops.iter().all(|o| matches!(o, Op::UpsertMaglev { .. })));
    }

    #[test]
    fn enabling_two_scopes_writes_the_internal_copy_before_the_default_frontend() {
        let mut ids = Ids::new();
        let np = |policy: &str| {
            service(json!({
                "metadata": {"name": "np", "namespace": "default"},
                "spec": {"type": "NodePort", "clusterIP": "10.96.0.20",
                         "externalTrafficPolicy": policy,
                         "ports": [{"port": 80, "nodePort": 30080}]}
            }))
        };
        let eps = [service_eps()];
        let cluster = state(&[np("Cluster")], &eps, &mut ids);
        let local = state(&[np("Local")], &eps, &mut ids);
        let ops = checked_plan(&cluster, &local);
        let internal = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, .. } if key.slot == 0 && key.scope == SCOPE_INTERNAL),
        );
        let default = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, value } if key.slot == 0 && key.scope == SCOPE_DEFAULT && value.flags & SVC_F_TWO_SCOPES != 0),
        );
        assert_eq!((internal.len(), default.len()), (1, 1), "{ops:#?}");
        assert!(internal[0] < default[0], "internal copy first");

        let ops = checked_plan(&local, &cluster);
        let default = pos(
            &ops,
            |o| matches!(o, Op::UpsertService { key, value } if key.slot == 0 && key.scope == SCOPE_DEFAULT && value.flags & SVC_F_TWO_SCOPES == 0),
        );
        let internal = pos(
            &ops,
            |o| matches!(o, Op::DeleteService { key } if key.slot == 0 && key.scope == SCOPE_INTERNAL),
        );
        assert!(
            default[0] < internal[0],
            "flag cleared before the internal copy goes"
        );
    }

    fn service_eps() -> k8s_openapi::api::core::v1::Endpoints {
        crate::dataplane::desired::tests::endpoints(json!({
            "metadata": {"name": "np", "namespace": "default"},
            "subsets": [{"addresses": [
                {"ip": "10.244.1.5", "nodeName": "node-a"},
                {"ip": "10.244.2.5", "nodeName": "node-b"}
            ], "ports": [{"port": 8080}]}]
        }))
    }

    #[test]
    fn deleting_a_two_scope_frontend_removes_the_default_scope_first() {
        let mut ids = Ids::new();
        let np = service(json!({
            "metadata": {"name": "np", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.20",
                     "externalTrafficPolicy": "Local",
                     "ports": [{"port": 80, "nodePort": 30080}]}
        }));
        let a = state(&[np], &[service_eps()], &mut ids);
        let b = state(&[], &[], &mut ids);
        let ops = checked_plan(&a, &b);
        let d = pos(
            &ops,
            |o| matches!(o, Op::DeleteService { key } if key.slot == 0 && key.scope == SCOPE_DEFAULT && key.addr == 0),
        );
        let i = pos(
            &ops,
            |o| matches!(o, Op::DeleteService { key } if key.slot == 0 && key.scope == SCOPE_INTERNAL),
        );
        assert!(d[0] < i[0], "default scope first");
    }

    #[test]
    fn replacing_an_endpoint_rewrites_its_slot_in_place_then_deletes_the_old_backend() {
        let mut ids = Ids::new();
        let svcs = [web("web", "10.96.0.10")];
        let a = state(
            &svcs,
            &[web_eps("web", &["10.244.1.5", "10.244.1.6"])],
            &mut ids,
        );
        let b = state(
            &svcs,
            &[web_eps("web", &["10.244.1.5", "10.244.1.7"])],
            &mut ids,
        );
        let ops = checked_plan(&a, &b);
        assert!(
            matches!(
                ops.as_slice(),
                [
                    Op::UpsertBackend { .. },
                    Op::UpsertService { key, .. },
                    Op::DeleteBackend { .. }
                ] if key.slot == 2
            ),
            "new backend, slot 2 rewritten, old backend removed: {ops:#?}"
        );
    }

    #[test]
    fn node_config_and_local_addresses_are_diffed() {
        let mut ids = Ids::new();
        let a = state(&[], &[], &mut ids);
        let mut ctx = node();
        ctx.node_addrs = vec![std::net::Ipv4Addr::new(198, 18, 0, 12)];
        ctx.node_addr = std::net::Ipv4Addr::new(198, 18, 0, 12);
        let b = desired(&[], &[], &ctx, &mut ids);
        let ops = checked_plan(&a, &b);
        assert!(matches!(ops[0], Op::SetNodeConfig(_)), "{ops:#?}");
        assert!(matches!(ops[1], Op::UpsertLocalAddr { .. }));
        assert!(matches!(ops[2], Op::DeleteLocalAddr { .. }));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn from_empty_actual_and_back_is_consistent_for_a_mixed_cluster() {
        let mut ids = Ids::new();
        let lb = service(json!({
            "metadata": {"name": "np", "namespace": "default",
                         "annotations": {LB_ALGORITHM_ANNOTATION: "maglev"}},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20",
                     "externalTrafficPolicy": "Local", "externalIPs": ["198.18.5.1"],
                     "sessionAffinity": "ClientIP",
                     "ports": [{"port": 80, "nodePort": 30080}, {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30053}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.6.1"}]}}
        }));
        let svcs = [lb, web("web", "10.96.0.10"), web("empty", "10.96.0.12")];
        let eps = [service_eps(), web_eps("web", &["10.244.1.5", "10.244.1.9"])];
        let empty = state(&[], &[], &mut ids);
        let full = state(&svcs, &eps, &mut ids);
        checked_plan(&empty, &full);
        let gone = state(&[], &[], &mut ids);
        let ops = checked_plan(&full, &gone);
        // ...and narrows the node config's NodePort range (no NodePorts left).
        assert!(
            ops.iter().all(|o| o.is_delete()
                || matches!(o, Op::SetFilterWord { bits: 0, .. })
                || matches!(o, Op::SetNodeConfig(c) if c.node_port_min > c.node_port_max)),
            "teardown only deletes"
        );
    }
}
