//! Writes an archive of namespaces straight from a cluster, for engine tests that must not
//! depend on the backup step's own choices (they name the cluster-scoped objects explicitly).
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::{Path, PathBuf};

use kpromote_archive::{
    ArchiveFacts, ArchiveWriter, Inclusion, NewObject, PolicyFacts, SourceCluster, WriterOptions,
};
use kpromote_core::resources::{ApiSurface, DEFAULT_EXCLUDED_RESOURCES};
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};

/// Archives every object of `namespaces` (minus the design's default exclusions) plus the
/// Namespace objects and the cluster-scoped objects named in `cluster` as (group, resource,
/// name), into `dir`. Returns the archive's path.
pub async fn archive(
    client: &Client,
    namespaces: &[&str],
    cluster: &[(&str, &str, &str)],
    dir: &Path,
) -> PathBuf {
    archive_with(client, namespaces, cluster, dir, WriterOptions::zstd()).await
}

/// [`archive`], written with `options` (e.g. small frames, so damage stays in one entry).
pub async fn archive_with(
    client: &Client,
    namespaces: &[&str],
    cluster: &[(&str, &str, &str)],
    dir: &Path,
    options: WriterOptions,
) -> PathBuf {
    let surface = ApiSurface::discover(client).await.unwrap();
    let excluded = surface.resolve_exclusions(DEFAULT_EXCLUDED_RESOURCES).unwrap();
    let path = dir.join("test-archive.tar.zst");
    let facts = ArchiveFacts {
        created_at: "2026-11-24T00:00:00Z".into(),
        source: SourceCluster {
            name: "member".into(),
            server_version: "v1.35.4".into(),
        },
        policy: PolicyFacts {
            name: "test".into(),
            included_namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
            excluded_resources: DEFAULT_EXCLUDED_RESOURCES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        },
        list_resource_versions: Default::default(),
    };
    let mut writer = ArchiveWriter::create(&path, facts, options).unwrap();
    let mut add = |resource: &str, group: &str, inclusion: Inclusion, obj: &DynamicObject| {
        let json = serde_json::to_vec(obj).unwrap();
        writer
            .add(NewObject::from_json(resource, group, inclusion, json).unwrap())
            .unwrap();
    };
    for served in surface.backup_types(&excluded) {
        let ar = served.api_resource();
        for ns in namespaces {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
            for mut obj in api.list(&ListParams::default()).await.unwrap() {
                obj.types = Some(kube::api::TypeMeta {
                    api_version: ar.api_version.clone(),
                    kind: ar.kind.clone(),
                });
                add(&ar.plural, &ar.group, Inclusion::Namespaced, &obj);
            }
        }
    }
    let nsar = ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&());
    let mut extra: Vec<(ApiResource, String, Inclusion)> = namespaces
        .iter()
        .map(|n| (nsar.clone(), (*n).to_owned(), Inclusion::Namespace))
        .collect();
    for (group, resource, name) in cluster {
        let served = surface
            .resources()
            .iter()
            .find(|r| r.group_resource.group() == *group && r.group_resource.resource() == *resource)
            .unwrap();
        extra.push((
            served.api_resource(),
            (*name).to_owned(),
            Inclusion::Dependency {
                of: "test".into(),
                via: "test".into(),
            },
        ));
    }
    for (ar, name, inclusion) in extra {
        let mut obj = Api::<DynamicObject>::all_with(client.clone(), &ar)
            .get(&name)
            .await
            .unwrap();
        obj.types = Some(kube::api::TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        });
        add(&ar.plural, &ar.group, inclusion, &obj);
    }
    writer.finish().unwrap().path
}
