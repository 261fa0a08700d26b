//! The process's own figures for `/metrics`: memory, descriptors, CPU time, start time, and
//! the memory limit of its cgroup — what an operator needs to see an OOM kill or a descriptor
//! leak coming (an OOM kill takes the mount away from the application).
//!
//! The names and meanings are Prometheus' standard process metrics (`process_*`, as every
//! official client library writes them), so existing dashboards and alerts work unchanged.
//! `prometheus-client` has no process collector, and the crates that add one are built for
//! other metrics libraries or older versions of it; so this module reads `/proc/self` at
//! scrape time through the `procfs` crate. The memory limit is etlfs' own
//! (`etlfs_memory_limit_bytes`), read from the cgroup files, because Prometheus has no
//! standard name for it and an alert on "memory near the limit" needs it.
//!
//! A `process_*` figure that cannot be read (no `/proc`, say) is left out rather than shown
//! as 0, so that a dashboard shows a gap and not a false value.

use std::path::Path;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The figures of this process, each `None` if it could not be read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessFigures {
    pub resident_memory_bytes: Option<u64>,
    pub virtual_memory_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
    /// The smallest memory limit along the process's cgroup path; `None` if unlimited.
    pub memory_limit_bytes: Option<u64>,
}

/// Reads the figures now.
pub fn read() -> ProcessFigures {
    let mut f = ProcessFigures::default();
    let Ok(me) = procfs::process::Process::myself() else {
        return f;
    };
    if let Ok(stat) = me.stat() {
        let ticks = procfs::ticks_per_second() as f64;
        f.resident_memory_bytes = Some(stat.rss * procfs::page_size());
        f.virtual_memory_bytes = Some(stat.vsize);
        f.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
        f.threads = u64::try_from(stat.num_threads).ok();
        f.start_time_seconds = procfs::boot_time_secs()
            .ok()
            .map(|boot| boot as f64 + stat.starttime as f64 / ticks);
    }
    f.open_fds = me.fd_count().ok().map(|n| n as u64);
    f.max_fds = me
        .limits()
        .ok()
        .and_then(|l| match l.max_open_files.soft_limit {
            procfs::process::LimitValue::Value(v) => Some(v),
            procfs::process::LimitValue::Unlimited => None,
        });
    if let Ok(cgroups) = std::fs::read_to_string("/proc/self/cgroup") {
        f.memory_limit_bytes = memory_limit(Path::new("/sys/fs/cgroup"), &cgroups);
    }
    f
}

/// Limits at or above this are "no limit" (cgroup v1 writes a page-rounded `i64::MAX`).
const UNLIMITED: u64 = 1 << 62;

/// The smallest memory limit on the cgroup path of a process whose `/proc/PID/cgroup` reads
/// `cgroups`, with the cgroup file systems mounted under `root`: cgroup v2's `memory.max`,
/// else v1's `memory.limit_in_bytes` in the memory hierarchy. Each ancestor that is visible
/// counts, because a limit set on a parent (a pod, a slice) bounds the child too. Inside a
/// container with its own cgroup namespace the path is `/`, and the files at the root are the
/// container's.
pub fn memory_limit(root: &Path, cgroups: &str) -> Option<u64> {
    let (dir, file) = cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            // Without a cgroup namespace the path names the host's hierarchy, which a
            // container sees only from its own cgroup down: then the root is its own.
            [root.join(rel), root.to_owned()]
                .into_iter()
                .find(|d| d.join("memory.max").exists())
                .map(|d| (d, "memory.max"))
        } else if controllers.split(',').any(|c| c == "memory") {
            let hierarchy = root.join("memory");
            let own = hierarchy.join(rel);
            let dir = if own.exists() { own } else { hierarchy };
            Some((dir, "memory.limit_in_bytes"))
        } else {
            None
        }
    })?;
    dir.ancestors()
        .take_while(|d| d.starts_with(root))
        .filter_map(|d| std::fs::read_to_string(d.join(file)).ok())
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .filter(|v| *v < UNLIMITED)
        .min()
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: Option<u64>) -> std::fmt::Result {
    let Some(v) = v else { return Ok(()) };
    let g = ConstGauge::new(v as i64);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn gauge_f(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: Option<f64>,
) -> std::fmt::Result {
    let Some(v) = v else { return Ok(()) };
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Writes the process metrics (see the module documentation).
pub fn encode(e: &mut DescriptorEncoder) -> std::fmt::Result {
    let f = read();
    gauge(
        e,
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        f.resident_memory_bytes,
    )?;
    gauge(
        e,
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        f.virtual_memory_bytes,
    )?;
    gauge(
        e,
        "process_open_fds",
        "Number of open file descriptors",
        f.open_fds,
    )?;
    gauge(
        e,
        "process_max_fds",
        "Maximum number of open file descriptors (the soft limit)",
        f.max_fds,
    )?;
    if let Some(cpu) = f.cpu_seconds {
        let c = ConstCounter::new(cpu);
        c.encode(e.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            c.metric_type(),
        )?)?;
    }
    gauge_f(
        e,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch in seconds",
        f.start_time_seconds,
    )?;
    gauge(
        e,
        "process_threads",
        "Number of OS threads in the process",
        f.threads,
    )?;
    // Always there (0: no limit), like `etlfs_max_local_bytes`, so that a rule can test for
    // a limit instead of guessing why the series is missing.
    gauge(
        e,
        "etlfs_memory_limit_bytes",
        "Memory limit of etlfs' cgroup (a container's limit, the smallest along its cgroup path); 0 without a limit",
        Some(f.memory_limit_bytes.unwrap_or(0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_figures_are_read() {
        let f = read();
        let rss = f.resident_memory_bytes.unwrap();
        assert!(rss > 1 << 20, "{f:?}");
        assert!(f.virtual_memory_bytes.unwrap() >= rss);
        let fds = f.open_fds.unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(
            read().open_fds.unwrap() > fds,
            "a new descriptor is counted"
        );
        drop(file);
        assert!(f.max_fds.unwrap() >= fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = f.start_time_seconds.unwrap();
        assert!(start <= now + 1.0 && start > now - 3600.0, "{start} {now}");
        assert!(f.threads.unwrap() >= 1);
        assert!(f.cpu_seconds.unwrap() >= 0.0);
    }

    fn write(root: &Path, rel: &str, value: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, value).unwrap();
    }

    #[test]
    fn the_smallest_limit_along_the_cgroup_path_counts() {
        let v2 = tempfile::tempdir().unwrap();
        let r = v2.path();
        write(r, "memory.max", "max\n");
        write(r, "kubepods/memory.max", "1073741824\n");
        write(r, "kubepods/pod1/memory.max", "max\n");
        write(r, "kubepods/pod1/c1/memory.max", "536870912\n");
        let own = "0::/kubepods/pod1/c1\n";
        assert_eq!(memory_limit(r, own), Some(536_870_912));
        assert_eq!(memory_limit(r, "0::/kubepods/pod1\n"), Some(1 << 30));
        assert_eq!(memory_limit(r, "0::/\n"), None, "no limit at the root");

        let v1 = tempfile::tempdir().unwrap();
        let r = v1.path();
        write(r, "memory/memory.limit_in_bytes", "9223372036854771712\n");
        write(r, "memory/docker/abc/memory.limit_in_bytes", "268435456\n");
        let own = "4:memory:/docker/abc\n3:cpu:/docker/abc\n0::/\n";
        assert_eq!(memory_limit(r, own), Some(268_435_456));
        // The host's path, seen from inside a container: the hierarchy's root is its own.
        write(r, "memory/memory.limit_in_bytes", "134217728\n");
        assert_eq!(
            memory_limit(r, "4:memory:/elsewhere/xyz\n"),
            Some(134_217_728)
        );
    }
}
