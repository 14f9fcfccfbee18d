//! How drop records reach userspace: a BPF ring buffer (Linux 5.8+), or per-CPU perf
//! buffers on kernels without one.
//!
//! Both are read the same way: wait until readable, then drain every record. The perf
//! buffers (one per online CPU) are gathered under one epoll descriptor, so the capture
//! loop waits on a single file descriptor either way.

use std::{
    io,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::maps::{
    Map, MapData, RingBuf,
    perf::{PerfEvent, PerfEventArray, PerfEventArrayBuffer},
};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tokio::io::unix::AsyncFd;

/// Which kind of buffer carries the records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BufferKind {
    /// The ring buffer when the kernel has it (5.8+), else perf buffers.
    #[default]
    Auto,
    /// BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`).
    Ringbuf,
    /// Per-CPU perf buffers (`BPF_MAP_TYPE_PERF_EVENT_ARRAY`), as kernels before 5.8 need.
    Perf,
}

impl BufferKind {
    /// Resolves `Auto` by asking the kernel whether it can create a ring buffer.
    pub fn resolve(self) -> BufferKind {
        match self {
            BufferKind::Auto => match aya::sys::is_map_supported(aya::maps::MapType::RingBuf) {
                Ok(false) => BufferKind::Perf,
                // Supported, or the probe itself failed: the ring buffer's own error (at
                // load) then says more than a failed probe would.
                _ => BufferKind::Ringbuf,
            },
            kind => kind,
        }
    }
}

/// Per-CPU perf buffer pages (a power of two): 1 MiB per CPU, about 2 600 records.
const PERF_PAGES: usize = 256;

pub enum EventSource {
    Ring(AsyncFd<RingBuf<MapData>>),
    Perf {
        /// Readable when any buffer is.
        epoll: AsyncFd<OwnedFd>,
        buffers: Vec<PerfEventArrayBuffer>,
        // Holds the buffers' slots in the kernel map.
        _array: PerfEventArray<MapData>,
    },
}

impl EventSource {
    /// Reads the ring buffer map `map`. Must run inside a tokio runtime.
    pub fn ring(map: Map) -> Result<Self, String> {
        let ring = RingBuf::try_from(map).map_err(|e| e.to_string())?;
        // SAFETY: the RingBuf owns its map fd, which stays open until the AsyncFd drops it.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1.to_string())?;
        Ok(EventSource::Ring(ring))
    }

    /// Opens one perf buffer per online CPU into the perf event array `map`. Must run
    /// inside a tokio runtime.
    pub fn perf(map: Map) -> Result<Self, String> {
        let mut array = PerfEventArray::try_from(map).map_err(|e| e.to_string())?;
        let cpus = aya::util::online_cpus().map_err(|(path, e)| format!("{path}: {e}"))?;
        let epoll =
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| format!("epoll: {e}"))?;
        let mut buffers = Vec::with_capacity(cpus.len());
        for cpu in cpus {
            let buf = PerfEventArrayBuffer::open(cpu, PERF_PAGES)
                .map_err(|e| format!("perf buffer for CPU {cpu}: {e}"))?;
            array
                .set(cpu, &buf)
                .map_err(|e| format!("perf buffer for CPU {cpu}: {e}"))?;
            epoll
                .add(
                    buf.as_fd(),
                    EpollEvent::new(EpollFlags::EPOLLIN, u64::from(cpu)),
                )
                .map_err(|e| format!("epoll: {e}"))?;
            buffers.push(buf);
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which closes it when dropped.
        let epoll =
            unsafe { AsyncFd::register_with_interest(epoll.0, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1.to_string())?;
        Ok(EventSource::Perf {
            epoll,
            buffers,
            _array: array,
        })
    }

    /// Waits until records are available.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            EventSource::Ring(ring) => ring.readable().await?.clear_ready(),
            EventSource::Perf { epoll, .. } => epoll.readable().await?.clear_ready(),
        }
        Ok(())
    }

    /// Hands every record now buffered to `f`, in order per buffer; returns how many.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        match self {
            EventSource::Ring(ring) => {
                let ring = ring.get_mut();
                while let Some(item) = ring.next() {
                    f(&item);
                    n += 1;
                }
            }
            EventSource::Perf { buffers, .. } => {
                let mut joined = Vec::new();
                for buf in buffers.iter_mut().filter(|b| b.readable()) {
                    buf.for_each(|event| match event {
                        PerfEvent::Sample { head, tail: [] } => {
                            f(head);
                            n += 1;
                        }
                        // A record that wrapped around the end of the buffer.
                        PerfEvent::Sample { head, tail } => {
                            joined.clear();
                            joined.extend_from_slice(head);
                            joined.extend_from_slice(tail);
                            f(&joined);
                            n += 1;
                        }
                        // The program counts records it could not write (STAT_LOST).
                        PerfEvent::Lost { .. } => {}
                    });
                }
            }
        }
        n
    }
}
