//! Shared helpers of the archive tests: the nginx example objects, synthetic objects, and a raw
//! archive builder written independently of the library's writer (it uses the `tar` crate and
//! hand-made manifests), so hostile archives can break any rule and the format spec is checked
//! by a second implementation.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::missing_panics_doc
)]

use kpromote_archive::{ArchiveFacts, Codec, Inclusion, NewObject, PolicyFacts, SourceCluster};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

/// The repository's `fixtures/` directory (these helpers serve the archive crate's tests and the
/// command line's, two packages at different depths).
pub fn fixtures_dir() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|dir| dir.join("fixtures"))
        .find(|dir| dir.join("valid").is_dir())
        .unwrap_or_else(|| panic!("no fixtures/valid above {}", here.display()))
}

/// Path of a fixture by name, e.g. `valid/nginx.tar.zst`.
pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

/// Facts of the example archives: fixed so archives are reproducible.
pub fn facts() -> ArchiveFacts {
    ArchiveFacts {
        created_at: "2024-03-11T10:49:07Z".to_owned(),
        source: SourceCluster {
            name: "member-cluster1".to_owned(),
            server_version: "v1.35.0".to_owned(),
        },
        policy: PolicyFacts {
            name: "promote-policy-sample".to_owned(),
            included_namespaces: vec!["nginx-test".to_owned()],
            excluded_resources: vec![
                "events".to_owned(),
                "events.events.k8s.io".to_owned(),
                "endpoints".to_owned(),
                "endpointslices.discovery.k8s.io".to_owned(),
            ],
        },
        list_resource_versions: BTreeMap::from([
            ("pods".to_owned(), "1042".to_owned()),
            ("deployments.apps".to_owned(), "1040".to_owned()),
        ]),
    }
}

const NS: &str = "nginx-test";
const DEPLOY_UID: &str = "9b1c3f0e-2a57-4d1e-8a4b-0f6f2c1d7e01";
const RS_UID: &str = "5d2e8a14-7c3b-4f0a-9e61-2b8c4d9f0a12";
const POD_UID: &str = "c7a9e3b2-1f48-4d6c-a0b5-3e9d8f2c6b23";
const SVC_UID: &str = "e4f1a2b3-6c5d-4e7f-8a9b-1c2d3e4f5a34";
const NS_UID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c45";

/// The design's example: Namespace `nginx-test`, Deployment `nginx` (nginx:1.14-alpine, one
/// replica, label app=nginx, port 80), its ReplicaSet and Pod, Service `nginx-service`.
pub fn nginx_objects() -> Vec<NewObject> {
    let labels = json!({"app": "nginx"});
    let container = json!({
        "name": "nginx",
        "image": "nginx:1.14-alpine",
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"containerPort": 80, "protocol": "TCP"}],
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File"
    });
    let pod_template_spec = json!({
        "containers": [container],
        "dnsPolicy": "ClusterFirst",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {},
        "terminationGracePeriodSeconds": 30
    });
    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NS,
            "uid": NS_UID,
            "resourceVersion": "1001",
            "creationTimestamp": "2024-03-11T10:40:00Z",
            "labels": {"kubernetes.io/metadata.name": NS}
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "nginx",
            "namespace": NS,
            "uid": DEPLOY_UID,
            "resourceVersion": "1040",
            "generation": 1,
            "creationTimestamp": "2024-03-11T10:41:00Z",
            "labels": labels,
            "annotations": {"deployment.kubernetes.io/revision": "1"}
        },
        "spec": {
            "replicas": 1,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"metadata": {"labels": labels}, "spec": pod_template_spec}
        },
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1}
    });
    let rs_labels = json!({"app": "nginx", "pod-template-hash": "7c5ddbdf54"});
    let replicaset = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "nginx-7c5ddbdf54",
            "namespace": NS,
            "uid": RS_UID,
            "resourceVersion": "1039",
            "generation": 1,
            "creationTimestamp": "2024-03-11T10:41:00Z",
            "labels": rs_labels,
            "annotations": {"deployment.kubernetes.io/desired-replicas": "1", "deployment.kubernetes.io/max-replicas": "2", "deployment.kubernetes.io/revision": "1"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "nginx", "uid": DEPLOY_UID, "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": rs_labels},
            "template": {"metadata": {"labels": rs_labels}, "spec": pod_template_spec}
        },
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "fullyLabeledReplicas": 1}
    });
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "nginx-7c5ddbdf54-x8k2p",
            "generateName": "nginx-7c5ddbdf54-",
            "namespace": NS,
            "uid": POD_UID,
            "resourceVersion": "1038",
            "creationTimestamp": "2024-03-11T10:41:01Z",
            "labels": rs_labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "nginx-7c5ddbdf54", "uid": RS_UID, "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [container],
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": true,
            "nodeName": "member-cluster1-worker",
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "tolerations": [
                {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
                {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
            ]
        },
        "status": {"phase": "Running", "podIP": "10.244.0.12", "hostIP": "172.18.0.2", "qosClass": "BestEffort", "startTime": "2024-03-11T10:41:01Z"}
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "nginx-service",
            "namespace": NS,
            "uid": SVC_UID,
            "resourceVersion": "1041",
            "creationTimestamp": "2024-03-11T10:41:05Z"
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.120.7",
            "clusterIPs": ["10.96.120.7"],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
            "selector": {"app": "nginx"},
            "sessionAffinity": "None"
        },
        "status": {"loadBalancer": {}}
    });
    [
        ("namespaces", "", namespace, Inclusion::Namespace),
        ("deployments", "apps", deployment, Inclusion::Namespaced),
        ("replicasets", "apps", replicaset, Inclusion::Namespaced),
        ("pods", "", pod, Inclusion::Namespaced),
        ("services", "", service, Inclusion::Namespaced),
    ]
    .into_iter()
    .map(|(resource, group, value, inclusion)| {
        NewObject::from_json(resource, group, inclusion, serde_json::to_vec(&value).unwrap()).unwrap()
    })
    .collect()
}

/// The namespaced object `value` of `resource` in `group`, as the writer takes it.
pub fn namespaced(resource: &str, group: &str, value: &Value) -> NewObject {
    NewObject::from_json(
        resource,
        group,
        Inclusion::Namespaced,
        serde_json::to_vec(value).unwrap(),
    )
    .unwrap()
}

/// A synthetic ConfigMap of about `size` bytes, named by `i`.
pub fn configmap(ns: &str, name: &str, size: usize) -> NewObject {
    let value = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}")},
        "data": {"payload": "x".repeat(size)}
    });
    namespaced("configmaps", "", &value)
}

// ---------------------------------------------------------------------------------------------
// Raw archive builder.

/// One raw tar entry: any path bytes, any type, any data.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub path: Vec<u8>,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
    pub link: Option<Vec<u8>>,
}

impl RawEntry {
    pub fn file(path: &str, data: &[u8]) -> Self {
        RawEntry {
            path: path.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            data: data.to_vec(),
            link: None,
        }
    }

    pub fn special(path: &str, kind: tar::EntryType, link: Option<&str>) -> Self {
        RawEntry {
            path: path.as_bytes().to_vec(),
            kind,
            data: Vec::new(),
            link: link.map(|l| l.as_bytes().to_vec()),
        }
    }

    /// The tar bytes of this entry (GNU header, GNU long name when needed), built with the
    /// `tar` crate but writing the name field raw so hostile names survive.
    pub fn tar_bytes(&self, ustar: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut header = if ustar {
            tar::Header::new_ustar()
        } else {
            tar::Header::new_gnu()
        };
        if self.path.len() > 100 {
            assert!(!ustar, "long names only with GNU headers in these tests");
            let mut long = tar::Header::new_gnu();
            long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            long.set_mode(0o644);
            long.set_uid(0);
            long.set_gid(0);
            long.set_mtime(0);
            long.set_size(self.path.len() as u64 + 1);
            long.set_entry_type(tar::EntryType::GNULongName);
            long.set_cksum();
            out.extend_from_slice(long.as_bytes());
            let mut name = self.path.clone();
            name.push(0);
            out.extend_from_slice(&name);
            out.extend(std::iter::repeat_n(0u8, pad(name.len())));
        }
        let n = self.path.len().min(100);
        header.as_old_mut().name[..n].copy_from_slice(&self.path[..n]);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_710_154_147);
        header.set_size(self.data.len() as u64);
        header.set_entry_type(self.kind);
        if let Some(link) = &self.link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        if matches!(self.kind, tar::EntryType::Char | tar::EntryType::Block) {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out.extend(std::iter::repeat_n(0u8, pad(self.data.len())));
        out
    }
}

fn pad(len: usize) -> usize {
    (512 - len % 512) % 512
}

pub fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An index record (JSON) for an object entry, derived from its path and body.
pub fn record_for(path: &str, body: &[u8]) -> Value {
    let parts: Vec<&str> = path.split('/').collect();
    let (gr, ns, file) = match parts.as_slice() {
        ["resources", gr, "namespaces", ns, file] => (*gr, Some(*ns), *file),
        ["resources", gr, "cluster", file] => (*gr, None, *file),
        _ => panic!("not an object path: {path}"),
    };
    let (resource, group) = gr.split_once('.').unwrap_or((gr, ""));
    let body_json: Value = serde_json::from_slice(body).unwrap_or(json!({}));
    let mut rec = json!({
        "path": path,
        "apiVersion": body_json["apiVersion"].as_str().unwrap_or("v1"),
        "kind": body_json["kind"].as_str().unwrap_or("ConfigMap"),
        "resource": resource,
        "group": group,
        "name": file.strip_suffix(".json").unwrap(),
        "ownerReferences": [],
        "inclusion": {"reason": "namespaced"},
        "size": body.len(),
        "sha256": sha_hex(body),
    });
    if let Some(ns) = ns {
        rec["namespace"] = json!(ns);
    }
    rec
}

/// The `metadata/version` record.
pub fn version_record() -> Value {
    json!({"path": "metadata/version", "size": 6, "sha256": sha_hex(b"1.1.0\n")})
}

/// How to assemble a raw archive; the defaults give a consistent kpromote archive.
#[derive(Debug, Clone)]
pub struct RawArchive {
    pub codec: Codec,
    /// Frames of frame A, each a list of entries.
    pub frames: Vec<Vec<RawEntry>>,
    /// Index lines (JSON values, serialized compactly).
    pub index: Vec<Value>,
    pub major: u16,
    pub minor: u16,
    /// Applied to the manifest before it is serialized.
    pub tweak_manifest: Option<fn(&mut Value)>,
    /// Replaces the index bytes after the manifest digest was computed.
    pub tamper_index: Option<fn(&mut Vec<u8>)>,
    /// Writes a wrong manifest digest into the locator.
    pub wrong_locator_digest: bool,
    /// Leaves the locator out.
    pub no_locator: bool,
    /// zstd level for frames (1 for speed on big hostile frames).
    pub level: i32,
    /// Writes frame B as two frames: the manifest, then the index and trailer (spec §4.1 allows
    /// several).
    pub split_frame_b: bool,
}

impl RawArchive {
    /// A consistent archive of these frames, with an index built from them.
    pub fn new(codec: Codec, frames: Vec<Vec<RawEntry>>) -> Self {
        let mut index = Vec::new();
        for entry in frames.iter().flatten() {
            let path = String::from_utf8_lossy(&entry.path).into_owned();
            if path == "metadata/version" {
                index.push(version_record());
            } else if entry.kind == tar::EntryType::Regular
                && kpromote_archive::layout::parse_object_path(&path).is_ok()
            {
                index.push(record_for(&path, &entry.data));
            }
        }
        RawArchive {
            codec,
            frames,
            index,
            major: 1,
            minor: 0,
            tweak_manifest: None,
            tamper_index: None,
            wrong_locator_digest: false,
            no_locator: false,
            level: 3,
            split_frame_b: false,
        }
    }

    fn compress(&self, data: &[u8]) -> Vec<u8> {
        match self.codec {
            Codec::Zstd => zstd::bulk::compress(data, self.level).unwrap(),
            Codec::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
                enc.write_all(data).unwrap();
                enc.finish().unwrap()
            }
        }
    }

    /// The archive's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut file = Vec::new();
        let mut frames_json = Vec::new();
        for frame in &self.frames {
            let mut tar = Vec::new();
            for entry in frame {
                tar.extend(entry.tar_bytes(false));
            }
            let compressed = self.compress(&tar);
            frames_json.push(json!({
                "offset": file.len(),
                "length": compressed.len(),
                "uncompressed": tar.len(),
                "entries": frame.len(),
                "firstPath": String::from_utf8_lossy(&frame[0].path),
            }));
            file.extend(compressed);
        }
        let mut index = Vec::new();
        for line in &self.index {
            index.extend(serde_json::to_vec(line).unwrap());
            index.push(b'\n');
        }
        let objects = self.index.len().saturating_sub(1);
        let mut manifest = json!({
            "formatVersion": format!("{}.{}.0", self.major, self.minor),
            "tool": {"name": "kpromote-test-builder", "version": "0"},
            "createdAt": "2024-03-11T10:49:07Z",
            "source": {"name": "member-cluster1", "serverVersion": "v1.35.0"},
            "policy": {"name": "hostile", "includedNamespaces": ["nginx-test"], "excludedResources": []},
            "listResourceVersions": {},
            "codec": {"name": match self.codec { Codec::Zstd => "zstd", Codec::Gzip => "gzip" }, "level": self.level},
            "summary": {"objects": objects, "objectBytes": 0, "byResource": {}, "byNamespace": {}},
            "index": {"path": "kpromote/index.jsonl", "records": self.index.len(), "size": index.len(), "sha256": sha_hex(&index)},
            "frames": frames_json,
        });
        if let Some(tweak) = self.tweak_manifest {
            tweak(&mut manifest);
        }
        let mut manifest_bytes = serde_json::to_vec_pretty(&manifest).unwrap();
        manifest_bytes.push(b'\n');
        let manifest_sha: [u8; 32] = Sha256::digest(&manifest_bytes).into();
        if let Some(tamper) = self.tamper_index {
            tamper(&mut index);
        }
        let manifest_tar = RawEntry::file("kpromote/manifest.json", &manifest_bytes).tar_bytes(false);
        let mut rest_tar = RawEntry::file("kpromote/index.jsonl", &index).tar_bytes(false);
        rest_tar.extend([0u8; 1024]);
        let frame_b = if self.split_frame_b {
            let mut b = self.compress(&manifest_tar);
            b.extend(self.compress(&rest_tar));
            b
        } else {
            self.compress(&[manifest_tar, rest_tar].concat())
        };
        let frame_b_offset = file.len() as u64;
        let frame_b_len = frame_b.len() as u64;
        file.extend(frame_b);
        if !self.no_locator {
            file.extend(locator_bytes(
                self.codec,
                self.major,
                self.minor,
                frame_b_offset,
                frame_b_len,
                if self.wrong_locator_digest {
                    [0xAB; 32]
                } else {
                    manifest_sha
                },
            ));
        }
        file
    }
}

/// The locator, encoded by hand from the spec's byte table (§7), independently of the library.
pub fn locator_bytes(codec: Codec, major: u16, minor: u16, offset: u64, len: u64, sha: [u8; 32]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(64);
    payload.extend_from_slice(b"KPROMOTE");
    payload.extend_from_slice(&major.to_le_bytes());
    payload.extend_from_slice(&minor.to_le_bytes());
    payload.extend_from_slice(&0u32.to_le_bytes());
    payload.extend_from_slice(&offset.to_le_bytes());
    payload.extend_from_slice(&len.to_le_bytes());
    payload.extend_from_slice(&sha);
    match codec {
        Codec::Zstd => {
            let mut out = 0x184D_2A5Bu32.to_le_bytes().to_vec();
            out.extend_from_slice(&64u32.to_le_bytes());
            out.extend(payload);
            out
        }
        Codec::Gzip => {
            let mut out = vec![0x1F, 0x8B, 8, 4, 0, 0, 0, 0, 0, 0xFF, 68, 0, b'K', b'P', 64, 0];
            out.extend(payload);
            out.extend([3, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            out
        }
    }
}

/// The nginx objects as raw entries (path, body), sorted.
pub fn nginx_entries() -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = nginx_objects()
        .into_iter()
        .map(|o| {
            let path = o.entry_path().unwrap();
            (path, o.json)
        })
        .collect();
    entries.sort();
    entries
}

/// Frames for a raw archive of the nginx objects: version alone, then all objects in one frame.
pub fn nginx_raw_frames() -> Vec<Vec<RawEntry>> {
    let objects = nginx_entries()
        .iter()
        .map(|(p, b)| RawEntry::file(p, b))
        .collect();
    vec![vec![RawEntry::file("metadata/version", b"1.1.0\n")], objects]
}

/// A Velero-style tarball (gzip, ustar headers, mode 0755, processing order, an API-version
/// copy), as Velero 1.x writes.
pub fn velero_tarball(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut version = RawEntry::file("metadata/version", b"1.1.0\n");
    version.kind = tar::EntryType::Regular;
    tar.extend(version.tar_bytes(true));
    // Processing order, not sorted: reverse.
    for (path, body) in entries.iter().rev() {
        tar.extend(RawEntry::file(path, body).tar_bytes(true));
        if path.starts_with("resources/pods/") {
            let copy = path.replacen("resources/pods/", "resources/pods/v1-preferredversion/", 1);
            tar.extend(RawEntry::file(&copy, body).tar_bytes(true));
        }
    }
    tar.extend([0u8; 1024]);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&tar).unwrap();
    enc.finish().unwrap()
}
