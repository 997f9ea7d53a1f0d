//! [`SmallDisk`]: a small tmpfs that a test fills up, to see what a full disk does to the hub's store,
//! AggregatorModule's state folder or anything else that writes (feature `test-util`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A small tmpfs mounted for one test and unmounted (lazily) when dropped.
///
/// Mounting needs root: [`SmallDisk::mount`] and [`SmallDisk::mount_at`] give `None` otherwise,
/// after a `SKIPPED:` line on stderr, and the test returns early (CI runs as root, so there the
/// tests run; they never pass by doing nothing where they could run).
pub struct SmallDisk {
    path: PathBuf,
    /// The folder holding the mount point when [`SmallDisk::mount`] made one.
    _dir: Option<tempfile::TempDir>,
}

impl SmallDisk {
    /// A tmpfs of `size` (`mount`'s syntax: `3m`, `512k`) in a new temporary folder.
    ///
    /// # Panics
    /// When running as root and the mount fails (a test helper: the test fails, saying so).
    pub fn mount(size: &str) -> Option<SmallDisk> {
        if !running_as_root() {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary folder for the mount point");
        let path = dir.path().join("disk");
        let mut disk = SmallDisk::mount_at(&path, size)?;
        disk._dir = Some(dir);
        Some(disk)
    }

    /// A tmpfs of `size` mounted on `path` (created if missing), for a test whose program keeps
    /// its files in a folder of a given name.
    ///
    /// # Panics
    /// When running as root and the folder cannot be made or the mount fails.
    pub fn mount_at(path: &Path, size: &str) -> Option<SmallDisk> {
        if !running_as_root() {
            return None;
        }
        std::fs::create_dir_all(path).expect("the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "mount -t tmpfs -o size={size} tmpfs {}",
            path.display()
        );
        Some(SmallDisk {
            path: path.to_path_buf(),
            _dir: None,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a file until the disk refuses more; returns the file (remove it to free the space).
    ///
    /// # Panics
    /// When the file cannot be created at all.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("the filler file");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn running_as_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
    }
    root
}
