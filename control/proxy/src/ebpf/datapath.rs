//! Loading, attaching and pinning the service load-balancer programs.
//!
//! Maps and links are pinned under a per-node directory (`/sys/fs/bpf/xkube/<node>/`): maps at
//! `maps/<NAME>`, links at `links/<attachment>`. A restarted agent reopens the pinned maps
//! (`EbpfLoader::map_pin_path` reuses a pin when one exists) and keeps the pinned links, so the
//! programs keep forwarding while the agent is away. [`teardown`] removes it all.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, Link, PinnedLink},
        tc::TcAttachOptions,
    },
};
use xkube_common::lb::programs;

use crate::{Error, Result};

/// Where per-node pin directories live.
pub use xkube_common::lb::PIN_ROOT;
use xkube_common::lb::{PIN_LINKS_DIR, PIN_MAPS_DIR};

/// Every load-balancer map, by name.
pub use xkube_common::lb::MAP_NAMES;

const CGROUP_PROGRAMS: [&str; 4] = [
    programs::SOCK_CONNECT4,
    programs::SOCK_SENDMSG4,
    programs::SOCK_RECVMSG4,
    programs::SOCK_GETPEERNAME4,
];
const XDP_PROGRAMS: [&str; 2] = [programs::XDP_UPLINK, programs::XDP_PASS];
const TC_PROGRAMS: [&str; 3] = [
    programs::TC_POD_INGRESS,
    programs::TC_POD_EGRESS,
    programs::TC_UPLINK_EGRESS,
];

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_owned();
    move |source| Error::Io { op, path, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    move |source| Error::Program { name, source }
}

/// The load-balancer programs and maps, loaded and verified.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// Links that are not pinned: detached when the `Datapath` is dropped.
    held: Vec<FdLink>,
}

impl Datapath {
    /// Loads every map (pinned under `pin_dir/maps`, reusing existing pins, when given) and
    /// every load-balancer program through the verifier.
    pub fn load(pin_dir: Option<&Path>) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        let map_dir = pin_dir.map(|d| d.join(PIN_MAPS_DIR));
        if let Some(dir) = &map_dir {
            std::fs::create_dir_all(dir).map_err(io("create pin directory", dir))?;
            for name in MAP_NAMES {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(super::object())?;
        for name in CGROUP_PROGRAMS {
            let p: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            p.load().map_err(prog_err(name))?;
        }
        for name in XDP_PROGRAMS {
            let p: &mut Xdp = program_mut(&mut ebpf, name)?;
            p.load().map_err(prog_err(name))?;
        }
        for name in TC_PROGRAMS {
            let p: &mut SchedClassifier = program_mut(&mut ebpf, name)?;
            p.load().map_err(prog_err(name))?;
        }
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.map(Path::to_path_buf),
            held: Vec::new(),
        })
    }

    /// The loaded object: maps for the writer, programs for `BPF_PROG_TEST_RUN`.
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// A loaded XDP program by name (see `xkube_common::lb::programs`).
    pub fn xdp(&self, name: &'static str) -> Result<&Xdp> {
        program(&self.ebpf, name)
    }

    /// A loaded tc program by name.
    pub fn tc(&self, name: &'static str) -> Result<&SchedClassifier> {
        program(&self.ebpf, name)
    }

    fn link_path(&self, what: &str) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|d| d.join(PIN_LINKS_DIR).join(what))
    }

    /// True when a pinned link for `what` exists (attached by an earlier agent run).
    fn already_attached(&self, what: &str) -> bool {
        self.link_path(what)
            .is_some_and(|p| PinnedLink::from_pin(&p).is_ok())
    }

    fn pin_link(&mut self, what: &str, link: FdLink) -> Result<()> {
        match self.link_path(what) {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io("create pin directory", dir))?;
                }
                link.pin(&path).map_err(|e| Error::Pin {
                    path: path.clone(),
                    source: e,
                })?;
                Ok(())
            }
            None => {
                self.held.push(link);
                Ok(())
            }
        }
    }

    /// Attaches the socket-LB programs to the cgroup at `cgroup` (a cgroup v2 directory): every
    /// process in it, pods and host processes of the node, connects straight to backends.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<()> {
        let file = std::fs::File::open(cgroup).map_err(io("open cgroup", cgroup))?;
        for name in CGROUP_PROGRAMS {
            let what = format!("cgroup-{name}");
            if self.already_attached(&what) {
                continue;
            }
            let p: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?;
            let id = p
                // bpf_link attachments take no flags (links always coexist); Single = no flags.
                .attach(&file, CgroupAttachMode::Single)
                .map_err(prog_err(name))?;
            let link = p.take_link(id).map_err(prog_err(name))?;
            let link = FdLink::try_from(link).map_err(|e| Error::Link { name, source: e })?;
            self.pin_link(&what, link)?;
        }
        Ok(())
    }

    /// Attaches the XDP uplink program to `iface` and the tc reply translator to its egress,
    /// in the calling thread's network namespace, after [`prepare_uplink`].
    pub fn attach_uplink(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        prepare_uplink(iface)?;
        let what = format!("{iface}-{}", programs::XDP_UPLINK);
        if !self.already_attached(&what) {
            let p: &mut Xdp = program_mut(&mut self.ebpf, programs::XDP_UPLINK)?;
            let id = p
                .attach(iface, mode)
                .map_err(prog_err(programs::XDP_UPLINK))?;
            let link = p.take_link(id).map_err(prog_err(programs::XDP_UPLINK))?;
            let link = FdLink::try_from(link).map_err(|e| Error::Link {
                name: programs::XDP_UPLINK,
                source: e,
            })?;
            self.pin_link(&what, link)?;
        }
        self.attach_tc(iface, programs::TC_UPLINK_EGRESS, TcAttachType::Egress)
    }

    /// Attaches the bare XDP pass program to `iface` (the far end of a veth whose near end
    /// runs native XDP that transmits).
    pub fn attach_xdp_pass(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let what = format!("{iface}-{}", programs::XDP_PASS);
        if self.already_attached(&what) {
            return Ok(());
        }
        let p: &mut Xdp = program_mut(&mut self.ebpf, programs::XDP_PASS)?;
        let id = p
            .attach(iface, mode)
            .map_err(prog_err(programs::XDP_PASS))?;
        let link = p.take_link(id).map_err(prog_err(programs::XDP_PASS))?;
        let link = FdLink::try_from(link).map_err(|e| Error::Link {
            name: programs::XDP_PASS,
            source: e,
        })?;
        self.pin_link(&what, link)
    }

    /// Attaches the pod programs to a pod's host-side veth (tcx ingress and egress).
    pub fn attach_pod(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(iface, programs::TC_POD_INGRESS, TcAttachType::Ingress)?;
        self.attach_tc(iface, programs::TC_POD_EGRESS, TcAttachType::Egress)
    }

    /// Removes the pinned links of a pod's veth (call when the pod goes away).
    pub fn detach_pod(&mut self, iface: &str) -> Result<()> {
        for name in [programs::TC_POD_INGRESS, programs::TC_POD_EGRESS] {
            if let Some(path) = self.link_path(&format!("{iface}-{name}"))
                && let Ok(link) = PinnedLink::from_pin(&path)
            {
                let link = link.unpin().map_err(io("unpin link", &path))?;
                link.detach().map_err(prog_err(name))?;
            }
        }
        Ok(())
    }

    fn attach_tc(&mut self, iface: &str, name: &'static str, at: TcAttachType) -> Result<()> {
        let what = format!("{iface}-{name}");
        if self.already_attached(&what) {
            return Ok(());
        }
        let p: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
        let id = p
            .attach_with_options(iface, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(prog_err(name))?;
        let link = p.take_link(id).map_err(prog_err(name))?;
        let link = FdLink::try_from(link).map_err(|e| Error::Link { name, source: e })?;
        self.pin_link(&what, link)
    }
}

/// Attaches the bare XDP pass program to `iface` (calling thread's namespace) with its link
/// pinned under `pin_dir/links`: the far end of a veth whose near end transmits with native
/// XDP (`XDP_TX` on a veth delivers nothing unless the peer runs an XDP program). Loads only
/// that program, with every map of the object shrunk to one entry.
pub fn attach_pass(pin_dir: &Path, iface: &str, mode: XdpMode) -> Result<()> {
    let link = pin_dir
        .join(PIN_LINKS_DIR)
        .join(format!("{iface}-{}", programs::XDP_PASS));
    if PinnedLink::from_pin(&link).is_ok() {
        return Ok(());
    }
    let mut loader = EbpfLoader::new();
    for name in MAP_NAMES
        .into_iter()
        .chain([xkube_common::probe::PROBE_COUNTERS, "AYA_LOGS"])
    {
        loader.map_max_entries(name, 1);
    }
    let mut ebpf = loader.load(super::object())?;
    let p: &mut Xdp = program_mut(&mut ebpf, programs::XDP_PASS)?;
    p.load().map_err(prog_err(programs::XDP_PASS))?;
    let id = p
        .attach(iface, mode)
        .map_err(prog_err(programs::XDP_PASS))?;
    let l = p.take_link(id).map_err(prog_err(programs::XDP_PASS))?;
    let l = FdLink::try_from(l).map_err(|e| Error::Link {
        name: programs::XDP_PASS,
        source: e,
    })?;
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(io("create pin directory", dir))?;
    }
    l.pin(&link).map_err(|e| Error::Pin {
        path: link.clone(),
        source: e,
    })?;
    Ok(())
}

/// Kernel settings the uplink needs (calling thread's namespace).
///
/// When `bpf_fib_lookup` cannot give a next hop (no neighbour entry yet) the XDP program hands
/// a translated frame to the stack, which forwards it and resolves the neighbour. SNATed frames
/// and translated replies then carry the node's own address as their source, which the stack
/// drops as martian unless `accept_local` is set; they also leave through the interface they
/// came in on, which must not trigger ICMP redirects. IP forwarding is on for pods anyway.
pub fn prepare_uplink(iface: &str) -> Result<()> {
    for (key, value) in [
        ("net/ipv4/ip_forward".to_owned(), "1"),
        (format!("net/ipv4/conf/{iface}/accept_local"), "1"),
        (format!("net/ipv4/conf/{iface}/send_redirects"), "0"),
        ("net/ipv4/conf/all/send_redirects".to_owned(), "0"),
    ] {
        xkube_netns::sysctl::set_here(&key, value).map_err(|e| Error::Uplink {
            iface: iface.to_owned(),
            reason: format!("sysctl {key}: {e}"),
        })?;
    }
    Ok(())
}

/// Removes everything pinned under `pin_dir`: links first (which detaches the programs), then
/// maps, then the directory. Safe to call when nothing is there.
pub fn teardown(pin_dir: &Path) -> Result<()> {
    let links = pin_dir.join(PIN_LINKS_DIR);
    if let Ok(entries) = std::fs::read_dir(&links) {
        for entry in entries.flatten() {
            let path = entry.path();
            match PinnedLink::from_pin(&path) {
                Ok(link) => {
                    let link = link.unpin().map_err(io("unpin link", &path))?;
                    // Detaching a link whose device is already gone fails harmlessly.
                    let _ = link.detach();
                }
                Err(_) => std::fs::remove_file(&path).map_err(io("remove", &path))?,
            }
        }
    }
    for dir in [links, pin_dir.join(PIN_MAPS_DIR)] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
        remove_dir(&dir)?;
    }
    remove_dir(pin_dir)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove directory", dir)(e)),
    }
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}

fn program<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a T>
where
    &'a T: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(prog_err(name))
}
