//! `apt-get` and `apt-cache` for the VM stage's downloads: on the system's own apt sources, or
//! on a Debian release those sources do not name (bullseye, for its 5.10 kernel), through a
//! sources list, package lists and a package cache of its own under `.cache/vm/`, on the
//! mirrors the system's sources use. The system's apt configuration and state stay untouched:
//! nothing is added to `/etc/apt`, and `/var/lib/apt/lists` is neither read nor written.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::super::run;

/// Where a kernel's package comes from.
#[derive(Clone, Copy, Debug)]
pub(super) enum Archive {
    /// The suites of the system's own apt sources (bookworm, bookworm-security).
    System,
    /// A Debian release and its security suite (`bullseye`, `bullseye-security`).
    Release(&'static str),
}

/// Runs apt's programs on one [`Archive`].
#[derive(Debug)]
pub(super) struct Apt {
    /// `-o` options that point apt at private sources, lists and cache; none for the system.
    options: Vec<String>,
}

impl Apt {
    /// Apt on `archive`; a [`Archive::Release`] keeps its state in `dir/apt-<release>` and
    /// has its package lists updated first (they are only needed when a kernel is fetched,
    /// and then they must be fresh: the archive drops superseded kernels).
    pub(super) fn new(archive: Archive, dir: &Path) -> Result<Self> {
        let Archive::Release(release) = archive else { return Ok(Self { options: Vec::new() }) };
        let state = dir.join(format!("apt-{release}"));
        let sources = state.join("sources.list");
        let lists = state.join("lists");
        let cache = state.join("cache");
        for needed in [lists.join("partial"), cache.join("archives/partial")] {
            fs::create_dir_all(&needed)
                .with_context(|| format!("creating {}", needed.display()))?;
        }
        fs::write(&sources, release_sources(release, &system_mirrors()?))
            .with_context(|| format!("writing {}", sources.display()))?;
        let option = |key: &str, path: &Path| format!("{key}={}", path.display());
        let apt = Self {
            options: vec![
                option("Dir::Etc::SourceList", &sources),
                option("Dir::Etc::SourceParts", Path::new("/dev/null")),
                option("Dir::State::Lists", &lists),
                option("Dir::Cache", &cache),
                // Only the package lists: no AppStream metadata.
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
            ],
        };
        eprintln!("vm-test: updating the package lists of {release} in {}", state.display());
        run(apt.command("apt-get").args(["update", "-qq"]))?;
        Ok(apt)
    }

    /// `program` (`apt-get`, `apt-cache`) with this archive's options.
    pub(super) fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        for option in &self.options {
            command.arg("-o").arg(option);
        }
        command
    }
}

/// The Debian archive mirror and security mirror of the system's apt sources, with the
/// keyring they are signed with.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mirrors {
    debian: Option<String>,
    security: Option<String>,
    signed_by: Option<String>,
}

/// The one-line sources list of `release` on `mirrors`.
fn release_sources(release: &str, mirrors: &Mirrors) -> String {
    let options = mirrors
        .signed_by
        .as_ref()
        .map_or_else(String::new, |keyring| format!("[signed-by={keyring}] "));
    let mut list = String::new();
    for (mirror, suite) in
        [(&mirrors.debian, release.to_owned()), (&mirrors.security, format!("{release}-security"))]
    {
        if let Some(mirror) = mirror {
            list.push_str(&format!("deb {options}{mirror} {suite} main\n"));
        }
    }
    list
}

/// The mirrors of the system's sources (`/etc/apt/sources.list.d/*.sources`, deb822, then
/// `*.list` and `/etc/apt/sources.list`, one-line): those that serve the system's own release
/// (`VERSION_CODENAME` of `/etc/os-release`) and its security suite.
fn system_mirrors() -> Result<Mirrors> {
    let os_release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = os_release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .context("/etc/os-release names no VERSION_CODENAME")?;
    let mut files: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|entries| entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.push(PathBuf::from("/etc/apt/sources.list"));
    let mut mirrors = Mirrors::default();
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else { continue };
        let entries = match file.extension().and_then(|ext| ext.to_str()) {
            Some("sources") => deb822_entries(&text),
            Some("list") => one_line_entries(&text),
            _ => continue,
        };
        for entry in entries {
            mirrors.take(&entry, &codename);
        }
    }
    if mirrors.debian.is_none() {
        bail!("no apt source of the system serves Debian {codename}: no mirror to take from");
    }
    Ok(mirrors)
}

/// One `deb` source: its URIs, suites and keyring.
#[derive(Debug, Default, PartialEq, Eq)]
struct Entry {
    uris: Vec<String>,
    suites: Vec<String>,
    signed_by: Option<String>,
}

impl Mirrors {
    /// Takes the mirrors of `entry` that serve `codename` or its security suite, unless one
    /// was taken already.
    fn take(&mut self, entry: &Entry, codename: &str) {
        let Some(uri) = entry.uris.first() else { return };
        let uri = uri.trim_end_matches('/');
        for suite in &entry.suites {
            let slot = if *suite == codename {
                &mut self.debian
            } else if *suite == format!("{codename}-security") {
                &mut self.security
            } else {
                continue;
            };
            if slot.is_none() {
                *slot = Some(uri.to_owned());
                if self.signed_by.is_none() {
                    self.signed_by.clone_from(&entry.signed_by);
                }
            }
        }
    }
}

/// The enabled `deb` stanzas of a deb822 `.sources` file. A `Signed-By` that is a key
/// inlined in the stanza (not a path) is left out.
fn deb822_entries(text: &str) -> Vec<Entry> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let mut fields = std::collections::BTreeMap::new();
            for line in stanza.lines().filter(|line| !line.starts_with('#')) {
                if let Some((key, value)) = line.split_once(':')
                    && !key.starts_with(' ')
                {
                    fields.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
                }
            }
            let words = |key: &str| -> Vec<String> {
                fields.get(key).map_or_else(Vec::new, |value| {
                    value.split_whitespace().map(str::to_owned).collect()
                })
            };
            let enabled = fields.get("enabled").is_none_or(|value| value != "no");
            (enabled && words("types").iter().any(|kind| kind == "deb")).then(|| Entry {
                uris: words("uris"),
                suites: words("suites"),
                signed_by: fields.get("signed-by").filter(|path| path.starts_with('/')).cloned(),
            })
        })
        .collect()
}

/// The `deb` lines of a one-line `.list` file: `deb [options] URI SUITE COMPONENT...`.
fn one_line_entries(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?.trim_start();
            let (options, rest) = match rest.strip_prefix('[') {
                Some(bracketed) => bracketed.split_once(']')?,
                None => ("", rest),
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            let signed_by = options
                .split_whitespace()
                .find_map(|option| option.strip_prefix("signed-by="))
                .map(str::to_owned);
            Some(Entry { uris: vec![uri], suites: vec![suite], signed_by })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_SOURCES: &str = "Types: deb\n\
        # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
        URIs: http://deb.debian.org/debian\n\
        Suites: bookworm bookworm-updates\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
        \n\
        Types: deb\n\
        URIs: http://deb.debian.org/debian-security\n\
        Suites: bookworm-security\n\
        Components: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

    #[test]
    fn the_mirrors_of_a_deb822_file_give_bullseyes_sources() {
        let mut mirrors = Mirrors::default();
        for entry in deb822_entries(DEBIAN_SOURCES) {
            mirrors.take(&entry, "bookworm");
        }
        assert_eq!(
            release_sources("bullseye", &mirrors),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian bullseye main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian-security bullseye-security main\n"
        );
    }

    #[test]
    fn other_archives_and_disabled_stanzas_are_not_taken() {
        let text = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n\
                    Components: main\n\nTypes: deb\nEnabled: no\nURIs: http://old.example/debian\n\
                    Suites: bookworm\nComponents: main\n";
        let mut mirrors = Mirrors::default();
        for entry in deb822_entries(text) {
            mirrors.take(&entry, "bookworm");
        }
        assert_eq!(mirrors, Mirrors::default());
    }

    #[test]
    fn one_line_sources_with_and_without_options() {
        let text = "# the archive\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://ftp.de.debian.org/debian/ bookworm main\n\
                    deb-src http://ftp.de.debian.org/debian bookworm main\n\
                    deb http://security.debian.org/debian-security bookworm-security main contrib\n";
        let mut mirrors = Mirrors::default();
        for entry in one_line_entries(text) {
            mirrors.take(&entry, "bookworm");
        }
        assert_eq!(
            mirrors,
            Mirrors {
                debian: Some("http://ftp.de.debian.org/debian".into()),
                security: Some("http://security.debian.org/debian-security".into()),
                signed_by: Some("/k.gpg".into()),
            }
        );
    }
}
