//! A minimal writer of `newc` cpio archives, the format the kernel unpacks as initramfs.

use std::collections::BTreeSet;

/// File type bits of `st_mode`.
const DIRECTORY: u32 = 0o040_000;
const REGULAR: u32 = 0o100_000;
const SYMLINK: u32 = 0o120_000;

/// An archive being built in memory; paths are relative (no leading `/`).
#[derive(Clone, Default)]
pub struct Archive {
    bytes: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

impl Archive {
    /// Adds directory `path` (once).
    pub fn dir(&mut self, path: &str) {
        if self.dirs.insert(path.to_owned()) {
            self.entry(path, DIRECTORY | 0o755, 2, &[]);
        }
    }

    /// Adds `path` and every directory above it.
    pub fn dirs(&mut self, path: &str) {
        let mut prefix = String::new();
        for part in path.split('/').filter(|part| !part.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.dir(&prefix.clone());
        }
    }

    /// Adds regular file `path` with `contents` and permission bits `mode`.
    pub fn file(&mut self, path: &str, contents: &[u8], mode: u32) {
        self.entry(path, REGULAR | mode, 1, contents);
    }

    /// Adds symbolic link `path` pointing to `target`; creates its directories.
    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_start_matches('/');
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dirs(parent);
        }
        self.entry(path, SYMLINK | 0o777, 1, target.as_bytes());
    }

    /// The archive's bytes, with the trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, &[]);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, links: u32, data: &[u8]) {
        self.inode += 1;
        let name_size = path.len() + 1;
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            links,
            0, // mtime: fixed, so that equal inputs give equal archives
            u32::try_from(data.len()).expect("initramfs files are smaller than 4 GiB"),
            0, // dev major
            0, // dev minor
            0, // rdev major
            0, // rdev minor
            u32::try_from(name_size).expect("short paths"),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Pads to a multiple of four bytes.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}
