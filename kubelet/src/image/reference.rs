//! Image references, `[domain[:port]/]path[:tag][@digest]`, parsed by hand to the distribution
//! reference grammar and normalised as docker and containerd do (`busybox` →
//! `docker.io/library/busybox:latest`).
//!
//! Why not `oci_client::Reference`'s own parser: it matches one regular expression whose tag part
//! is a Unicode `\w{0,127}`. Its compiled automaton, about 4 MiB, stays resident for the life of
//! the process (and 8 MiB more are touched while it is built): a tenth of a node agent's memory,
//! spent on the first pod. The result is still an `oci_client::Reference`, which the puller needs.

use oci_client::Reference;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const DEFAULT_TAG: &str = "latest";
/// The longest repository (the path, with docker.io's `library/` added), as the registry allows.
const MAX_REPOSITORY_LEN: usize = 255;
/// A tag is one word character and at most 127 more.
const MAX_TAG_LEN: usize = 128;

/// Parses `reference`; the error says what is wrong with it, in docker's words.
pub(crate) fn parse(reference: &str) -> Result<Reference, String> {
    if reference.is_empty() {
        return Err("repository name must have at least one component".into());
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    // A tag's ':' comes after the last '/'; a port's comes before it.
    let path_start = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[path_start..].find(':') {
        Some(i) => (&rest[..path_start + i], Some(&rest[path_start + i + 1..])),
        None => (rest, None),
    };
    let (domain, path) = split_domain(name);
    if let Some(domain) = domain
        && !is_domain(domain)
    {
        return Err("invalid reference format".into());
    }
    if !path.split('/').all(is_path_component) {
        return Err(if path.bytes().any(|b| b.is_ascii_uppercase()) {
            "invalid reference format: repository name must be lowercase".into()
        } else {
            "invalid reference format".into()
        });
    }
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Err("invalid reference format".into());
    }
    if let Some(digest) = digest {
        check_digest(digest)?;
    }
    let registry = match domain {
        None | Some(DOCKER_HUB_LEGACY) => DOCKER_HUB,
        Some(d) => d,
    };
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_string()
    };
    if repository.len() > MAX_REPOSITORY_LEN {
        return Err(format!(
            "repository name must not be more than {MAX_REPOSITORY_LEN} characters"
        ));
    }
    let registry = registry.to_string();
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or(DEFAULT_TAG).into()),
    })
}

/// The domain and the path of a name: its first component is a domain when it looks like a
/// host (a '.', a port, `localhost`, or capitals, which no path may hold), as docker decides.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (Some(first), path)
        }
        _ => (None, name),
    }
}

/// `host[:port]`, the host a DNS name, an IPv4 address or a bracketed IPv6 address.
fn is_domain(domain: &str) -> bool {
    let (host, port) = if let Some(v6) = domain.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = domain.starts_with('[') || host.split('.').all(is_domain_component);
    port_ok && host_ok
}

/// `[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?`
fn is_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
}

/// `[a-z0-9]+` runs joined by one separator each: `.`, `_`, `__` or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = c.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (ASCII word characters, as docker reads `\w`).
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm:hex`, the algorithm `[A-Za-z][A-Za-z0-9]*` parts joined by `+._-`, the hex as long
/// as the algorithm's sum (sha256, sha384 and sha512 are the ones registries serve).
fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err("invalid checksum digest format".into());
    };
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(u8::is_ascii_alphanumeric)
    };
    if !algorithm.split(['+', '.', '_', '-']).all(component_ok)
        || hex.len() < 32
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err("invalid checksum digest format".into());
    }
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err("unsupported digest algorithm".into()),
    };
    if hex.len() != want {
        return Err("invalid checksum digest length".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(r: &str) -> Result<String, String> {
        parse(r).map(|r| r.whole())
    }

    #[test]
    fn references_are_normalised_as_docker_does() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (given, want) in [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("user/app:v1_2.3-rc", "docker.io/user/app:v1_2.3-rc"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            ("127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1"),
            ("localhost/a/b/c", "localhost/a/b/c:latest"),
            ("localhost:5000/a", "localhost:5000/a:latest"),
            ("Registry.Example/x", "Registry.Example/x:latest"),
            ("[::1]:5000/app:2", "[::1]:5000/app:2"),
            ("reg.io/a.b_c__d---e/f", "reg.io/a.b_c__d---e/f:latest"),
            ("localhost:5000", "docker.io/library/localhost:5000"),
        ] {
            assert_eq!(whole(given).as_deref(), Ok(want), "{given}");
        }
        let by_digest = parse(&format!("reg:5000/app@{digest}")).unwrap();
        assert_eq!(
            (by_digest.registry(), by_digest.repository()),
            ("reg:5000", "app")
        );
        assert_eq!(
            (by_digest.tag(), by_digest.digest()),
            (None, Some(digest.as_str()))
        );
        let both = parse(&format!("busybox:1@{digest}")).unwrap();
        assert_eq!(
            (both.tag(), both.digest()),
            (Some("1"), Some(digest.as_str()))
        );
    }

    #[test]
    fn malformed_references_are_refused_with_dockers_reason() {
        let long_tag = format!("app:{}", "t".repeat(129));
        let long_name = format!("reg.io/{}", "a".repeat(256));
        for (given, reason) in [
            ("", "repository name must have at least one component"),
            ("no spaces allowed", "invalid reference format"),
            (
                "Busybox",
                "invalid reference format: repository name must be lowercase",
            ),
            (
                "reg.io/App",
                "invalid reference format: repository name must be lowercase",
            ),
            ("app:", "invalid reference format"),
            ("app:-tag", "invalid reference format"),
            ("app:täg", "invalid reference format"),
            (long_tag.as_str(), "invalid reference format"),
            ("a//b", "invalid reference format"),
            ("/app", "invalid reference format"),
            ("app/", "invalid reference format"),
            ("a..b/c", "invalid reference format"),
            ("-reg.io/c", "invalid reference format"),
            ("reg.io:/c", "invalid reference format"),
            ("reg.io:50x/c", "invalid reference format"),
            ("[::g]:5000/c", "invalid reference format"),
            ("a_-b", "invalid reference format"),
            ("a___b", "invalid reference format"),
            ("app@sha256", "invalid checksum digest format"),
            ("app@sha256:xyz", "invalid checksum digest format"),
            (
                "app@sha256:0123456789abcdef0123456789abcdef",
                "invalid checksum digest length",
            ),
            (
                "app@md5:0123456789abcdef0123456789abcdef",
                "unsupported digest algorithm",
            ),
            (
                long_name.as_str(),
                "repository name must not be more than 255 characters",
            ),
        ] {
            assert_eq!(whole(given).err().as_deref(), Some(reason), "{given:?}");
        }
    }

    /// Where the grammar says the same, this parser and oci-client's agree (the differences
    /// are docker's: ASCII-only tags, capitals mark a domain, bracketed IPv6 registries).
    #[test]
    fn agrees_with_oci_clients_parser_on_ordinary_references() {
        let digest = format!("sha512:{}", "0f".repeat(64));
        for given in [
            "busybox",
            "busybox:latest",
            "a/b/c/d:e",
            "quay.io/org/app:1.2.3",
            "registry.k8s.io/pause:3.10",
            "my-registry.local:5000/team/app_x:rc-1",
            &format!("ghcr.io/o/r@{digest}"),
            "x",
            "a.b",
            "a-b---c",
            "UPPER:case",
            "app:ta@g",
            "foo/:bar",
            "host:99999/x",
        ] {
            let theirs = given.parse::<Reference>().map(|r| r.whole()).ok();
            assert_eq!(whole(given).ok(), theirs, "{given}");
        }
    }
}
