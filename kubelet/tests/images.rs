//! The image store against the real thing (run as root): archives built from the host's static
//! busybox, `skopeo` for docker-archives, overlayfs mounts, hostile layers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use skiff_kubelet::image::busybox::{BusyboxImage, ExtraFile};
use skiff_kubelet::image::oci_archive::{LayerBuilder, LayerCompression, write_oci_archive};
use skiff_kubelet::image::{
    ImageConfig, ImageError, ImageStore, PullOptions, PullPolicy, mount_rootfs, unmount_rootfs,
};

/// A scratch directory whose root filesystems are unmounted when the test ends, pass or fail.
struct Scratch {
    dir: tempfile::TempDir,
    containers: Vec<PathBuf>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("skiff-images-")
                .tempdir()
                .unwrap(),
            containers: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> ImageStore {
        ImageStore::open(&self.path("root")).unwrap()
    }

    fn container(&mut self, name: &str) -> PathBuf {
        let dir = self.path(&format!("containers/{name}"));
        self.containers.push(dir.clone());
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for dir in &self.containers {
            let _ = unmount_rootfs(dir);
        }
    }
}

fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: install the Debian package {package}"
    );
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn busybox_archive(scratch: &Scratch, reference: &str) -> PathBuf {
    let path = scratch.path(&format!("{}.tar", reference.replace([':', '/'], "_")));
    BusyboxImage::new(reference).write(&path).unwrap();
    path
}

#[test]
fn busybox_oci_archive_imports_and_mounts_on_overlayfs() {
    let mut scratch = Scratch::new();
    let archive = busybox_archive(&scratch, "busybox:1");
    let store = scratch.store();
    let imported = store.import(&archive).unwrap();
    assert_eq!(imported.len(), 1);
    let image = store.lookup("busybox:1").unwrap();
    assert_eq!(image.id, imported[0].id);
    assert_eq!(image.repo_tags, ["docker.io/library/busybox:1"]);
    assert_eq!(image.config.cmd, Some(vec!["sh".to_string()]));
    assert!(image.size > 1_000_000, "size {}", image.size);
    assert_eq!(store.lookup(&image.id).unwrap().id, image.id);
    assert_eq!(store.lookup(&image.id[7..19]).unwrap().id, image.id);
    assert!(matches!(
        store.lookup("busybox:2"),
        Err(ImageError::NotFound(_))
    ));

    // Importing again changes nothing; a second tag of other content shares nothing wrongly.
    store.import(&archive).unwrap();
    let mut second = BusyboxImage::new("busybox:2");
    second.extra_files.push(ExtraFile {
        path: "/etc/motd".into(),
        contents: b"second\n".to_vec(),
        mode: 0o644,
    });
    let second_archive = scratch.path("second.tar");
    let built = second.write(&second_archive).unwrap();
    store.import(&second_archive).unwrap();
    assert_eq!(
        store.lookup("docker.io/library/busybox:2").unwrap().id,
        built.id
    );
    assert_ne!(built.id, image.id);
    assert_eq!(store.list().unwrap().len(), 2);

    let first = scratch.container("first");
    let rootfs = mount_rootfs(&image, &first).unwrap();
    assert_eq!(
        mount_rootfs(&image, &first).unwrap(),
        rootfs,
        "mounting again is a no-op"
    );
    let out = run(Command::new("chroot").arg(&rootfs).args([
        "/bin/sh",
        "-c",
        "grep nobody /etc/passwd; ls /bin | grep -c ''; echo written > /tmp/file",
    ]));
    assert!(out.contains("nobody:x:65534:65534"), "{out}");
    let applets: usize = out.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(applets > 100, "{applets} entries in /bin");
    assert!(
        first.join("upper/tmp/file").exists(),
        "writes land in the container's upper dir"
    );
    assert!(
        !image.layers[0].join("tmp/file").exists(),
        "the shared layer is untouched"
    );

    let other = scratch.container("other");
    let other_root = mount_rootfs(&image, &other).unwrap();
    assert!(!other_root.join("tmp/file").exists());
    unmount_rootfs(&first).unwrap();
    unmount_rootfs(&first).unwrap();
    assert!(!rootfs.join("bin/busybox").exists());

    // Removing the image while a container's root still stacks its layer keeps the layer.
    assert_eq!(
        store.remove("busybox:1").unwrap(),
        std::slice::from_ref(&image.id)
    );
    assert!(matches!(
        store.lookup("busybox:1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(other_root.join("bin/busybox").is_file());
    assert!(image.layers[0].join("bin/busybox").is_file());
    unmount_rootfs(&other).unwrap();
    let report = store
        .collect_garbage(&Default::default(), 0, Duration::ZERO)
        .unwrap();
    assert_eq!(report.freed_bytes, image.size, "freed once no root uses it");
    assert!(!image.layers[0].exists());
}

#[test]
fn docker_archive_imports_with_its_repo_tags() {
    require_tool("skopeo", "skopeo");
    let scratch = Scratch::new();
    let archive = busybox_archive(&scratch, "busybox:1");
    let docker = scratch.path("docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci-archive:{}", archive.display()),
        &format!(
            "docker-archive:{}:registry.example:5000/team/app:2",
            docker.display()
        ),
    ]));
    let store = scratch.store();
    let imported = store.import(&docker).unwrap();
    assert_eq!(imported[0].repo_tags, ["registry.example:5000/team/app:2"]);
    let image = store.lookup("registry.example:5000/team/app:2").unwrap();
    assert_eq!(image.config.cmd, Some(vec!["sh".to_string()]));
    let oci = store.import(&archive).unwrap();
    assert_eq!(
        oci[0].layers, image.layers,
        "the same layer is unpacked once and shared"
    );
    assert!(image.layers[0].join("bin/busybox").is_file());

    // skopeo's OCI archives carry the name in org.opencontainers.image.ref.name alone.
    let skopeo_oci = scratch.path("skopeo-oci.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci-archive:{}", archive.display()),
        &format!("oci-archive:{}:quay.io/team/tool:3", skopeo_oci.display()),
    ]));
    let named = store.import(&skopeo_oci).unwrap().remove(0);
    // The same manifest as the busybox:1 imported above, so one image with both names.
    assert_eq!(
        named.repo_tags,
        ["docker.io/library/busybox:1", "quay.io/team/tool:3"]
    );
    assert_eq!(named.id, oci[0].id);
}

#[test]
fn concurrent_imports_of_one_archive_share_one_layer() {
    let scratch = Scratch::new();
    let archive = busybox_archive(&scratch, "busybox:1");
    let root = scratch.path("root");
    let ids: Vec<String> = std::thread::scope(|threads| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                threads.spawn(|| {
                    ImageStore::open(&root).unwrap().import(&archive).unwrap()[0]
                        .id
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let store = scratch.store();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(
        std::fs::read_dir(root.join("images/layers"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(root.join("images/tmp")).unwrap().count(),
        0
    );
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_content() {
    let mut scratch = Scratch::new();
    let mut lower = LayerBuilder::new();
    lower
        .dir("etc", 0o755)
        .unwrap()
        .file("etc/gone", b"deleted above", 0o644)
        .unwrap()
        .file("etc/kept", b"kept", 0o644)
        .unwrap()
        .dir("data", 0o755)
        .unwrap()
        .file("data/old", b"old", 0o644)
        .unwrap()
        .dir("old-dir", 0o755)
        .unwrap()
        .file("old-dir/inside", b"x", 0o644)
        .unwrap();
    let mut upper = LayerBuilder::new();
    upper
        .whiteout("etc/gone")
        .unwrap()
        .whiteout("old-dir")
        .unwrap()
        .dir("data", 0o755)
        .unwrap()
        .opaque("data")
        .unwrap()
        .file("data/new", b"new", 0o644)
        .unwrap();
    let archive = scratch.path("two-layers.tar");
    write_oci_archive(
        &archive,
        "example.com/two-layers:1",
        &ImageConfig::default(),
        &[lower.finish().unwrap(), upper.finish().unwrap()],
        LayerCompression::Zstd,
    )
    .unwrap();
    let store = scratch.store();
    let image = store.import(&archive).unwrap().remove(0);
    assert_eq!(image.layers.len(), 2);
    let container = scratch.container("c");
    let rootfs = mount_rootfs(&image, &container).unwrap();
    assert!(
        !rootfs.join("etc/gone").exists(),
        "whiteout hides the lower file"
    );
    assert_eq!(std::fs::read(rootfs.join("etc/kept")).unwrap(), b"kept");
    let data: Vec<String> = std::fs::read_dir(rootfs.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        data,
        ["new"],
        "the opaque directory shows only its own layer"
    );
    assert!(
        !rootfs.join("old-dir").exists(),
        "a whiteout hides a whole directory"
    );
    // The container can make it again, over the whiteout.
    std::fs::create_dir(rootfs.join("old-dir")).unwrap();
    assert_eq!(
        std::fs::read_dir(rootfs.join("old-dir")).unwrap().count(),
        0
    );
}

#[test]
fn many_layers_mount_past_the_mount_option_limit() {
    let mut scratch = Scratch::new();
    // 80 layer paths of ~120 bytes each would not fit mount(2)'s one page of options.
    let layers: Vec<Vec<u8>> = (0..80)
        .map(|i| {
            let mut layer = LayerBuilder::new();
            layer
                .file(&format!("layer-{i}"), format!("{i}").as_bytes(), 0o644)
                .unwrap();
            layer.finish().unwrap()
        })
        .collect();
    let archive = scratch.path("many.tar");
    write_oci_archive(
        &archive,
        "example.com/many:1",
        &ImageConfig::default(),
        &layers,
        LayerCompression::Uncompressed,
    )
    .unwrap();
    let store = scratch.store();
    let image = store.import(&archive).unwrap().remove(0);
    let options: usize = image.layers.iter().map(|l| l.as_os_str().len() + 1).sum();
    assert!(options > 4096, "{options} bytes of lower directories");
    let container = scratch.container("many");
    let rootfs = mount_rootfs(&image, &container).unwrap();
    for i in [0, 41, 79] {
        assert_eq!(
            std::fs::read_to_string(rootfs.join(format!("layer-{i}"))).unwrap(),
            i.to_string()
        );
    }
}

/// A tar entry written byte by byte, so it can say what `tar::Builder` refuses to write.
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    link: &str,
    data: &[u8],
) {
    let mut header = tar::Header::new_old();
    let old = header.as_old_mut();
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

#[test]
fn hostile_layers_are_rejected_and_write_nothing_outside() {
    use tar::EntryType::{Link, Regular, Symlink};
    let scratch = Scratch::new();
    let outside = scratch.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"safe").unwrap();
    let victim = outside.join("victim").display().to_string();
    type Entry<'a> = (&'a str, tar::EntryType, String, &'a [u8]);
    let outside_dir = outside.display().to_string();
    let cases: Vec<(&str, &str, Vec<Entry>)> = vec![
        (
            "dot-dot",
            "'..'",
            vec![("../../../outside/evil", Regular, String::new(), b"x")],
        ),
        (
            "through-a-symlink",
            "not a directory",
            vec![
                ("escape", Symlink, outside_dir.clone(), b""),
                ("escape/evil", Regular, String::new(), b"x"),
            ],
        ),
        (
            "hardlink-outside",
            "'..'",
            vec![("stolen", Link, "../../outside/victim".into(), b"")],
        ),
        (
            "hardlink-absolute",
            "not in this layer",
            vec![("stolen", Link, victim.clone(), b"")],
        ),
        (
            "hardlink-through-a-symlink",
            "not a directory",
            vec![
                ("escape", Symlink, outside_dir.clone(), b""),
                ("stolen", Link, "escape/victim".into(), b""),
            ],
        ),
    ];
    let store = scratch.store();
    let archive_of = |name: &str, entries: &[Entry]| {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            raw_entry(&mut tar, path, *kind, link, data);
        }
        let archive = scratch.path(&format!("{name}.tar"));
        write_oci_archive(
            &archive,
            &format!("example.com/{name}:1"),
            &ImageConfig::default(),
            &[tar.into_inner().unwrap()],
            LayerCompression::Gzip,
        )
        .unwrap();
        archive
    };
    for (name, reason, entries) in &cases {
        let err = store.import(&archive_of(name, entries)).expect_err(name);
        assert!(
            matches!(&err, ImageError::UnsafeLayer { reason: r, .. } if r.contains(reason)),
            "{name}: {err}"
        );
        assert!(!outside.join("evil").exists(), "{name} wrote outside");
        assert_eq!(
            std::fs::read(outside.join("victim")).unwrap(),
            b"safe",
            "{name}"
        );
    }
    assert!(store.list().unwrap().is_empty());
    // A file over a symlink to the outside replaces the link instead of writing through it.
    let replaced = archive_of(
        "replace-a-symlink",
        &[
            ("victim", Symlink, victim.clone(), b""),
            ("victim", Regular, String::new(), b"inside"),
        ],
    );
    let image = store.import(&replaced).unwrap().remove(0);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"safe");
    assert_eq!(
        std::fs::read(image.layers[0].join("victim")).unwrap(),
        b"inside"
    );
    store.remove(&image.id).unwrap();
    assert!(store.list().unwrap().is_empty());
    let tmp = scratch.path("root/images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "staging cleaned up"
    );
    let layers = scratch.path("root/images/layers");
    assert_eq!(
        std::fs::read_dir(&layers).unwrap().count(),
        0,
        "no layer kept"
    );
}

/// A `docker-registry` on a loopback port with its storage in the scratch directory; killed
/// when dropped.
struct Registry {
    child: std::process::Child,
    address: String,
}

impl Registry {
    /// `extra` is more YAML for the registry's config, after `http.addr` (so it may go on with
    /// `http.tls` and then top-level keys such as `auth`).
    fn start(scratch: &Scratch, extra: &str) -> Registry {
        require_tool("docker-registry", "docker-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = scratch.path("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n{extra}",
                scratch.path("registry-data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(scratch.path("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry { child, address };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen on {}",
                registry.address
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        registry
    }

    /// `skopeo copy SOURCE docker://REGISTRY/NAME` with more skopeo flags.
    fn push(&self, source: &str, name: &str, flags: &[&str]) {
        require_tool("skopeo", "skopeo");
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        run(command.args(flags).args([
            source.to_string(),
            format!("docker://{}/{name}", self.address),
        ]));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI layout directory whose index holds an image index with the two images, the first as
/// linux/amd64 and the second as linux/arm64, named `multi`.
fn multi_arch_layout(scratch: &Scratch, amd64: &Path, arm64: &Path) -> PathBuf {
    let layout = scratch.path("multi-layout");
    let mut entries = Vec::new();
    for (archive, arch) in [(amd64, "amd64"), (arm64, "arm64")] {
        tar::Archive::new(std::fs::File::open(archive).unwrap())
            .unpack(&layout)
            .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest = &index["manifests"][0];
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest["digest"],
            "size": manifest["size"],
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(&nested)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(layout.join("blobs/sha256").join(&hex), &nested).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    layout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_local_registry() {
    let scratch = Scratch::new();
    let registry = Registry::start(&scratch, "");
    let archive = busybox_archive(&scratch, "busybox:1");
    let built_id = ImageStore::open(&scratch.path("builder"))
        .unwrap()
        .import(&archive)
        .unwrap()[0]
        .id
        .clone();
    registry.push(
        &format!("oci-archive:{}", archive.display()),
        "tools/busybox:1",
        &[],
    );
    let mut other = BusyboxImage::new("other:1");
    other.extra_files.push(ExtraFile {
        path: "/etc/arch".into(),
        contents: b"arm64\n".to_vec(),
        mode: 0o644,
    });
    let other_archive = scratch.path("other.tar");
    other.write(&other_archive).unwrap();
    let layout = multi_arch_layout(&scratch, &archive, &other_archive);
    registry.push(
        &format!("oci:{}:multi", layout.display()),
        "tools/multi:1",
        &["--all"],
    );

    let store = scratch.store();
    let insecure = PullOptions {
        insecure_registries: vec![registry.address.clone()],
        ..PullOptions::default()
    };
    let reference = format!("{}/tools/busybox:1", registry.address);

    // Plain HTTP is used only for registries named insecure.
    let err = store
        .pull(&reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Pull { .. }), "{err}");

    let image = store.pull(&reference, &insecure).await.unwrap();
    assert_eq!(image.id, built_id);
    assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
    assert!(
        image.repo_digests[0].starts_with(&format!("{}/tools/busybox@sha256:", registry.address))
    );
    assert!(image.layers[0].join("bin/busybox").is_file());
    assert_eq!(store.lookup(&image.repo_digests[0]).unwrap().id, built_id);

    // The index resolves to the linux/amd64 image, and its layer is already present.
    let multi = store
        .pull(&format!("{}/tools/multi:1", registry.address), &insecure)
        .await
        .unwrap();
    assert_eq!(multi.id, built_id);
    assert_eq!(multi.layers, image.layers);

    // zstd and uncompressed layers (pushed as they are), each into a store lacking the layer.
    for (name, compression, media_type) in [
        (
            "zstd",
            LayerCompression::Zstd,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        (
            "plain",
            LayerCompression::Uncompressed,
            "application/vnd.oci.image.layer.v1.tar",
        ),
    ] {
        let mut image = BusyboxImage::new(&format!("{name}:1"));
        image.compression = compression;
        let archive = scratch.path(&format!("{name}.tar"));
        image.write(&archive).unwrap();
        registry.push(
            &format!("oci-archive:{}", archive.display()),
            &format!("tools/{name}:1"),
            &["--preserve-digests"],
        );
        let fresh = ImageStore::open(&scratch.path(&format!("root-{name}"))).unwrap();
        let image = fresh
            .pull(&format!("{}/tools/{name}:1", registry.address), &insecure)
            .await
            .unwrap();
        assert_eq!(image.id, built_id, "{name}");
        assert!(image.layers[0].join("bin/busybox").is_file(), "{name}");
        let manifest = fresh
            .dir()
            .join("blobs/sha256")
            .join(&image.manifest_digest["sha256:".len()..]);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], media_type);
    }

    // Several layers fetched at once, one of them twice in the image: stacked in order.
    let layer = |name: &str, content: &str| {
        let mut layer = LayerBuilder::new();
        layer.file(name, content.as_bytes(), 0o644).unwrap();
        layer.finish().unwrap()
    };
    let layers = [
        layer("a", "a1"),
        layer("shared", "below"),
        layer("a", "a2"),
        layer("shared", "below"),
        layer("b", "b"),
    ];
    let stacked = scratch.path("stacked.tar");
    write_oci_archive(
        &stacked,
        "stacked:1",
        &ImageConfig::default(),
        &layers,
        LayerCompression::Gzip,
    )
    .unwrap();
    registry.push(
        &format!("oci-archive:{}", stacked.display()),
        "tools/stacked:1",
        &[],
    );
    let image = store
        .pull(&format!("{}/tools/stacked:1", registry.address), &insecure)
        .await
        .unwrap();
    assert_eq!(image.layers.len(), 5);
    assert_eq!(image.layers[1], image.layers[3]);
    let mut containers = Scratch::new();
    let rootfs = mount_rootfs(&image, &containers.container("stacked")).unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("a")).unwrap(),
        "a2",
        "upper layers win"
    );
    assert_eq!(std::fs::read_to_string(rootfs.join("b")).unwrap(), "b");
    drop(containers);

    let missing = format!("{}/tools/missing:1", registry.address);
    match store.pull(&missing, &insecure).await {
        Err(ImageError::Pull { reason, .. }) => {
            assert!(
                reason.to_lowercase().contains("manifest unknown"),
                "{reason}"
            )
        }
        other => panic!("pulling a missing image: {other:?}"),
    }

    // Pull policies.
    let never = store
        .ensure(&missing, PullPolicy::Never, &insecure)
        .await
        .unwrap_err();
    assert!(matches!(never, ImageError::NeverPull { .. }), "{never}");
    assert!(!never.is_pull_failure());
    let present = store
        .ensure(&reference, PullPolicy::Never, &insecure)
        .await
        .unwrap();
    assert_eq!(present.id, built_id);

    // Pods starting together wait for one pull of their image.
    registry.push(
        &format!("oci-archive:{}", archive.display()),
        "tools/burst:1",
        &[],
    );
    let burst = format!("{}/tools/burst:1", registry.address);
    let pulls = (0..4).map(|_| store.ensure(&burst, PullPolicy::IfNotPresent, &insecure));
    for result in futures::future::join_all(pulls).await {
        assert_eq!(result.unwrap().id, built_id);
    }
    drop(registry);
    let cached = store
        .ensure(&reference, PullPolicy::IfNotPresent, &insecure)
        .await
        .unwrap();
    assert_eq!(
        cached.id, built_id,
        "IfNotPresent does not reach the registry"
    );
    let always = store
        .ensure(&reference, PullPolicy::Always, &insecure)
        .await
        .unwrap_err();
    assert!(always.is_pull_failure(), "{always}");
}

/// Large enough that an importer or puller is caught unpacking it.
const BIG_FILE: u64 = 16 << 20;

/// An OCI archive `big:1` whose one layer holds a BIG_FILE-byte file `big`.
fn big_archive(scratch: &Scratch) -> PathBuf {
    let mut big = LayerBuilder::new();
    big.file("big", &vec![0u8; BIG_FILE as usize], 0o644)
        .unwrap();
    let archive = scratch.path("big.tar");
    let config = BusyboxImage::new("big:1").config;
    let layers = [big.finish().unwrap()];
    write_oci_archive(&archive, "big:1", &config, &layers, LayerCompression::Gzip).unwrap();
    archive
}

/// Runs `skiff-kubelet --root-dir ROOT image ARGS…` and kills it (SIGKILL) while it is writing
/// the big file into its staging directory.
fn kill_while_unpacking(root: &Path, args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff-kubelet"))
        .arg("--root-dir")
        .arg(root)
        .arg("image")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staging = root.join("images/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let partial = loop {
        let found = std::fs::read_dir(&staging).ok().and_then(|dirs| {
            dirs.flatten()
                .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
                .map(|layer| layer.path().join("fs/big"))
                .find(|big| big.exists())
        });
        if let Some(big) = found {
            break big;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{args:?} ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{args:?} never started unpacking"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(partial.exists(), "killed while unpacking");
}

/// After a kill: a fresh store lists nothing, finds nothing and has removed the debris.
fn assert_nothing_half_made(root: &Path, reference: &str) -> ImageStore {
    let store = ImageStore::open(root).unwrap();
    assert!(store.list().unwrap().is_empty(), "no half image is listed");
    assert!(matches!(
        store.lookup(reference),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(
        std::fs::read_dir(root.join("images/tmp")).unwrap().count(),
        0,
        "staging debris removed"
    );
    store
}

#[test]
fn an_import_killed_midway_leaves_nothing_used_and_can_be_redone() {
    let scratch = Scratch::new();
    let archive = big_archive(&scratch);
    let root = scratch.path("root");
    kill_while_unpacking(&root, &["import", archive.to_str().unwrap()]);
    let store = assert_nothing_half_made(&root, "big:1");
    let image = store.import(&archive).unwrap().remove(0);
    assert_eq!(
        std::fs::metadata(image.layers[0].join("big"))
            .unwrap()
            .len(),
        BIG_FILE
    );
    assert_eq!(store.lookup("big:1").unwrap().id, image.id);
}

#[test]
fn garbage_collection_removes_unused_images_least_recently_used_first() {
    let scratch = Scratch::new();
    let store = scratch.store();
    let mut ids = Vec::new();
    for tag in ["1", "2", "3"] {
        let mut image = BusyboxImage::new(&format!("busybox:{tag}"));
        image.extra_files.push(ExtraFile {
            path: "/etc/tag".into(),
            contents: tag.as_bytes().to_vec(),
            mode: 0o644,
        });
        let archive = scratch.path(&format!("{tag}.tar"));
        image.write(&archive).unwrap();
        ids.push(store.import(&archive).unwrap().remove(0).id);
    }
    let per_image = store.lookup("busybox:1").unwrap().size;
    assert_eq!(store.disk_usage().unwrap(), 3 * per_image);
    // busybox:3 was used after busybox:2, so busybox:2 goes first; busybox:1 runs.
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.mark_used(&ids[2]).unwrap();
    let in_use = std::collections::HashSet::from([ids[0].clone()]);
    // Images younger than the minimum age are kept.
    let report = store
        .collect_garbage(&in_use, u64::MAX, Duration::from_secs(3600))
        .unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    let report = store.collect_garbage(&in_use, 1, Duration::ZERO).unwrap();
    assert_eq!(report.removed, [ids[1].clone()]);
    assert_eq!(report.freed_bytes, per_image);
    assert!(matches!(
        store.lookup("busybox:2"),
        Err(ImageError::NotFound(_))
    ));
    let report = store
        .collect_garbage(&in_use, u64::MAX, Duration::ZERO)
        .unwrap();
    assert_eq!(report.removed, [ids[2].clone()]);
    assert_eq!(store.disk_usage().unwrap(), per_image);
    assert_eq!(store.list().unwrap().len(), 1);

    // The command line: ls as crictl prints it, rm by name.
    let cli = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_skiff-kubelet"))
            .arg("--root-dir")
            .arg(scratch.path("root"))
            .arg("image")
            .args(args))
    };
    let listing = cli(&["ls"]);
    let mut lines = listing.lines();
    assert!(lines.next().unwrap().starts_with("REPOSITORY"), "{listing}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..3],
        ["docker.io/library/busybox", "1", &ids[0][7..20]],
        "{listing}"
    );
    cli(&["rm", "busybox:1"]);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.disk_usage().unwrap(), 0);
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    require_tool("openssl", "openssl");
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or_default()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A P-256 key and a self-signed certificate for `name` (with `san`, e.g. `IP:127.0.0.1`).
fn self_signed(scratch: &Scratch, name: &str, san: &str) -> (PathBuf, PathBuf) {
    let key = scratch.path(&format!("{name}.key"));
    let cert = scratch.path(&format!("{name}.crt"));
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName={san}"),
        ],
        None,
    );
    (key, cert)
}

/// A key and certificate for `san` issued by the CA `ca` (key, certificate): TLS clients refuse
/// a CA certificate as a server's own.
fn issued_by(
    scratch: &Scratch,
    ca: &(PathBuf, PathBuf),
    name: &str,
    san: &str,
) -> (PathBuf, PathBuf) {
    let key = scratch.path(&format!("{name}.key"));
    let csr = scratch.path(&format!("{name}.csr"));
    let cert = scratch.path(&format!("{name}.crt"));
    let extensions = scratch.path(&format!("{name}.ext"));
    std::fs::write(
        &extensions,
        format!("basicConstraints=CA:FALSE\nsubjectAltName={san}\n"),
    )
    .unwrap();
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
            "-subj",
            &format!("/CN={name}"),
        ],
        None,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca.1.to_str().unwrap(),
            "-CAkey",
            ca.0.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            extensions.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
        None,
    );
    (key, cert)
}

/// A registry bearer token: an ES256 JWT whose `x5c` header carries the signing certificate,
/// as docker distribution's token authentication verifies it.
fn registry_token(key: &Path, cert: &Path, claims: &serde_json::Value) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let der = openssl(
        &["x509", "-in", cert.to_str().unwrap(), "-outform", "DER"],
        None,
    );
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "x5c": [STANDARD.encode(der)]});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = openssl(
        &["dgst", "-sha256", "-sign", key.to_str().unwrap()],
        Some(input.as_bytes()),
    );
    // openssl writes SEQUENCE { INTEGER r, INTEGER s }; a JWT wants r and s as 32 bytes each.
    let mut raw = [0u8; 64];
    let mut at = 2;
    for half in raw.chunks_mut(32) {
        assert_eq!(signature[at], 0x02, "an ECDSA signature in DER");
        let len = signature[at + 1] as usize;
        let value = &signature[at + 2..at + 2 + len];
        let value = &value[value.len().saturating_sub(32)..];
        half[32 - value.len()..].copy_from_slice(value);
        at += 2 + len;
    }
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw))
}

/// A token endpoint on loopback that hands out `token` to requests carrying the expected
/// basic credentials (and answers 401 to others); stopped when dropped.
struct TokenServer {
    address: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(token: String, credentials: &str) -> TokenServer {
        use base64::Engine;
        use std::io::{BufRead, Write};
        let expected = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut authorized = false;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("authorization:") {
                        authorized = value.trim() == expected.to_ascii_lowercase();
                    }
                    line.clear();
                }
                let (status, body) = if authorized {
                    (
                        "200 OK",
                        serde_json::json!({"token": token, "access_token": token}).to_string(),
                    )
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#
                            .to_string(),
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer {
            address,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_over_https_with_token_auth_and_a_pull_secret() {
    let scratch = Scratch::new();
    let ca = self_signed(&scratch, "skiff-test-ca", "DNS:skiff-test-ca");
    let (server_key, server_cert) = issued_by(&scratch, &ca, "registry", "IP:127.0.0.1");
    let (token_key, token_cert) = self_signed(&scratch, "token-issuer", "DNS:token-issuer");
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": "skiff-test-issuer", "sub": "puller", "aud": "skiff-test-registry",
        "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": "skiff-test",
        "access": [{"type": "repository", "name": "tools/secure", "actions": ["pull", "push"]}],
    });
    let tokens = TokenServer::start(
        registry_token(&token_key, &token_cert, &claims),
        "puller:secret",
    );
    let registry = Registry::start(
        &scratch,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\nauth:\n  token:\n    realm: http://{}/token\n    service: skiff-test-registry\n    issuer: skiff-test-issuer\n    rootcertbundle: {}\n",
            server_cert.display(),
            server_key.display(),
            tokens.address,
            token_cert.display()
        ),
    );
    let archive = busybox_archive(&scratch, "secure:1");
    registry.push(
        &format!("oci-archive:{}", archive.display()),
        "tools/secure:1",
        &["--dest-creds=puller:secret"],
    );
    let reference = format!("{}/tools/secure:1", registry.address);
    let store = scratch.store();
    let ca = std::fs::read(&ca.1).unwrap();

    let anonymous = PullOptions {
        ca_certificates: vec![ca.clone()],
        ..PullOptions::default()
    };
    let err = store.pull(&reference, &anonymous).await.unwrap_err();
    assert!(
        matches!(&err, ImageError::Pull { reason, .. } if reason.contains("unauthorized")),
        "{err}"
    );

    let mut with_secret = anonymous.clone();
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "puller:secret");
    with_secret
        .add_docker_config_json(
            format!(
                r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
                registry.address
            )
            .as_bytes(),
        )
        .unwrap();
    let image = store.pull(&reference, &with_secret).await.unwrap();
    assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
    assert!(image.layers[0].join("bin/busybox").is_file());

    // Without the registry's CA the TLS handshake fails.
    let untrusted = PullOptions {
        ca_certificates: Vec::new(),
        ..with_secret.clone()
    };
    match store.pull(&reference, &untrusted).await {
        Err(ImageError::Pull { reason, .. }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("pulling without trusting the registry: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_killed_midway_leaves_nothing_used_and_can_be_redone() {
    let scratch = Scratch::new();
    let registry = Registry::start(&scratch, "");
    let archive = big_archive(&scratch);
    registry.push(
        &format!("oci-archive:{}", archive.display()),
        "tools/big:1",
        &[],
    );
    let reference = format!("{}/tools/big:1", registry.address);
    let root = scratch.path("root");
    let args = ["pull", "--insecure-registry", &registry.address, &reference];
    tokio::task::block_in_place(|| kill_while_unpacking(&root, &args));
    let store = assert_nothing_half_made(&root, &reference);
    let options = PullOptions {
        insecure_registries: vec![registry.address.clone()],
        ..PullOptions::default()
    };
    let image = store.pull(&reference, &options).await.unwrap();
    assert_eq!(
        std::fs::metadata(image.layers[0].join("big"))
            .unwrap()
            .len(),
        BIG_FILE
    );
}

#[test]
fn docker_save_layout_with_a_symlinked_repeated_layer() {
    use sha2::Digest;
    let mut scratch = Scratch::new();
    let mut layer = LayerBuilder::new();
    layer.file("hello", b"hello\n", 0o644).unwrap();
    let layer = layer.finish().unwrap();
    let diff_id = format!(
        "sha256:{}",
        sha2::Sha256::digest(&layer)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["cat", "/hello"], "Env": null},
        "rootfs": {"type": "layers", "diff_ids": [diff_id, diff_id]},
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": ["hello:saved"],
        "Layers": ["first/layer.tar", "second/layer.tar"],
    }])
    .to_string();
    // As `docker save` writes a layer that repeats: a symlink to the first copy.
    let archive = scratch.path("saved.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for (path, data) in [
        ("manifest.json", manifest.as_bytes()),
        ("config.json", config.as_bytes()),
        ("first/layer.tar", &layer[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        tar.append_data(&mut header, path, data).unwrap();
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    tar.append_link(&mut header, "second/layer.tar", "../first/layer.tar")
        .unwrap();
    tar.into_inner().unwrap();

    let store = scratch.store();
    let image = store.import(&archive).unwrap().remove(0);
    assert_eq!(image.repo_tags, ["docker.io/library/hello:saved"]);
    assert_eq!(
        image.config.cmd,
        Some(vec!["cat".to_string(), "/hello".to_string()])
    );
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.layers[0], image.layers[1], "one layer, unpacked once");
    assert_eq!(
        std::fs::read(image.layers[0].join("hello")).unwrap(),
        b"hello\n"
    );
    let container = scratch.container("saved");
    let rootfs = mount_rootfs(&image, &container).unwrap();
    assert_eq!(std::fs::read(rootfs.join("hello")).unwrap(), b"hello\n");
}
