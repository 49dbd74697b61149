//! Loader for `xkube_probe`, the XDP interface counter.

use aya::{
    Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use aya_log::EbpfLogger;
use xkube_common::probe::{PROBE_COUNTERS, PROBE_PROGRAM, ProbeCounter};

use crate::{Error, Result};

/// The probe program loaded into the kernel (verified), ready to attach.
pub struct Probe {
    ebpf: Ebpf,
}

/// Counters summed over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    pub frames: u64,
    pub ipv4: u64,
    pub tcp: u64,
    pub udp: u64,
    pub bytes: u64,
}

impl Probe {
    /// Loads the object's maps and the probe program (this runs the verifier).
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new().load(super::object())?;
        program_mut(&mut ebpf)?
            .load()
            .map_err(|source| Error::Program {
                name: PROBE_PROGRAM,
                source,
            })?;
        Ok(Self { ebpf })
    }

    /// Starts forwarding the program's aya-log records to `logger`. Call
    /// [`EbpfLogger::flush`] to drain them.
    pub fn logger<L: log::Log>(&mut self, logger: L) -> Result<EbpfLogger<L>> {
        Ok(EbpfLogger::init_with_logger(&mut self.ebpf, logger)?)
    }

    /// Attaches to `iface` in the calling thread's network namespace. The link lives as long
    /// as this `Probe` (or until [`Probe::detach`]).
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<XdpLinkId> {
        program_mut(&mut self.ebpf)?
            .attach(iface, mode)
            .map_err(|source| Error::Program {
                name: PROBE_PROGRAM,
                source,
            })
    }

    /// Detaches a link made by [`Probe::attach`].
    pub fn detach(&mut self, link: XdpLinkId) -> Result<()> {
        program_mut(&mut self.ebpf)?
            .detach(link)
            .map_err(|source| Error::Program {
                name: PROBE_PROGRAM,
                source,
            })
    }

    /// The loaded program, e.g. for [`super::testrun::run`].
    pub fn program(&self) -> Result<&Xdp> {
        self.ebpf
            .program(PROBE_PROGRAM)
            .ok_or(Error::MissingProgram(PROBE_PROGRAM))?
            .try_into()
            .map_err(|source| Error::Program {
                name: PROBE_PROGRAM,
                source,
            })
    }

    /// Reads the counters, summed over CPUs.
    pub fn counters(&self) -> Result<ProbeCounters> {
        let map = self
            .ebpf
            .map(PROBE_COUNTERS)
            .ok_or(Error::MissingMap(PROBE_COUNTERS))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(|source| Error::Map {
                name: PROBE_COUNTERS,
                source,
            })?;
        let sum = |c: ProbeCounter| -> Result<u64> {
            let values = array.get(&c.index(), 0).map_err(|source| Error::Map {
                name: PROBE_COUNTERS,
                source,
            })?;
            Ok(values.iter().sum())
        };
        Ok(ProbeCounters {
            frames: sum(ProbeCounter::Frames)?,
            ipv4: sum(ProbeCounter::Ipv4)?,
            tcp: sum(ProbeCounter::Tcp)?,
            udp: sum(ProbeCounter::Udp)?,
            bytes: sum(ProbeCounter::Bytes)?,
        })
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROBE_PROGRAM)
        .ok_or(Error::MissingProgram(PROBE_PROGRAM))?
        .try_into()
        .map_err(|source| Error::Program {
            name: PROBE_PROGRAM,
            source,
        })
}
