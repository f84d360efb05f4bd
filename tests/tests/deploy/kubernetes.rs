//! The Kubernetes base (`deploy/kubernetes/`): its manifests parse, and
//! their probes, ports, settings and cluster wiring are the server's own;
//! kustomize renders it with its secrets in place.

use super::*;
use crate::process::SERVER_BIN;

/// The HTTP paths of the StatefulSet's probes.
pub(super) fn probe_paths() -> anyhow::Result<Vec<String>> {
    let docs = yaml_docs(&deploy_dir().join("kubernetes/statefulset.yaml"))?;
    let container = &docs[0]["spec"]["template"]["spec"]["containers"][0];
    let paths: Vec<String> = ["startupProbe", "livenessProbe", "readinessProbe"]
        .iter()
        .filter_map(|p| str_of(&container[*p]["httpGet"]["path"]).map(str::to_owned))
        .collect();
    anyhow::ensure!(paths.len() == 3, "three probes, each an HTTP GET");
    Ok(paths)
}

/// The `TILLSTREAM_*` variables a command reads, from its `--help`.
pub(super) fn env_vars_of(args: &[&str]) -> anyhow::Result<BTreeSet<String>> {
    let out = Command::new(SERVER_BIN).args(args).arg("--help").output()?;
    anyhow::ensure!(out.status.success(), "tillstream {args:?} --help failed");
    let help = String::from_utf8_lossy(&out.stdout);
    Ok(help
        .match_indices("[env: ")
        .map(|(at, _)| {
            help[at + 6..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect())
}

/// The Kubernetes base: every resource kustomization.yaml lists parses;
/// probes ask the server's real paths on its HTTP port; the Services
/// reach the container's ports with the right protocols; the grace period
/// outlasts the drain; the ConfigMap's settings are real ones that
/// `tillstream check-config` accepts, and every variable set is one the
/// commands read (or one that another variable's value refers to). The
/// nodes form a cluster: each advertises its own name under the headless
/// governing Service, which carries both ports.
#[test]
fn kubernetes_manifests_match_the_server_they_run() -> anyhow::Result<()> {
    let k8s = deploy_dir().join("kubernetes");
    let kustomization = &yaml_docs(&k8s.join("kustomization.yaml"))?[0];
    let mut objects = Vec::new();
    for res in kustomization["resources"].as_vec().into_iter().flatten() {
        let file = str_of(res).ok_or_else(|| anyhow::anyhow!("a resource is not a file name"))?;
        for doc in yaml_docs(&k8s.join(file))? {
            anyhow::ensure!(
                str_of(&doc["apiVersion"]).is_some() && str_of(&doc["kind"]).is_some(),
                "{file}: a document without apiVersion or kind"
            );
            objects.push(doc);
        }
    }
    let of_kind = |kind: &str| -> Vec<&Yaml> {
        objects
            .iter()
            .filter(|o| str_of(&o["kind"]) == Some(kind))
            .collect()
    };
    let settings: toml::Table = std::fs::read_to_string(k8s.join("tillstream.toml"))?.parse()?;
    let port_of = |key: &str| -> anyhow::Result<i64> {
        let addr = settings
            .get(key)
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow::anyhow!("tillstream.toml has no {key}"))?;
        Ok(addr.rsplit(':').next().unwrap_or_default().parse()?)
    };
    let (quic_port, http_port) = (port_of("listen")?, port_of("http")?);

    let sets = of_kind("StatefulSet");
    assert_eq!(sets.len(), 1, "one StatefulSet");
    let pod = &sets[0]["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    let container = &pod["spec"]["containers"][0];
    let named_port = |name: &str| -> Option<(i64, String)> {
        container["ports"].as_vec()?.iter().find_map(|p| {
            (str_of(&p["name"]) == Some(name)).then(|| {
                (
                    p["containerPort"].as_i64().unwrap_or(-1),
                    str_of(&p["protocol"]).unwrap_or("TCP").to_owned(),
                )
            })
        })
    };
    assert_eq!(named_port("quic"), Some((quic_port, "UDP".into())));
    assert_eq!(named_port("http"), Some((http_port, "TCP".into())));
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(str_of(&get["path"]), Some(path), "{probe}");
        let port = str_of(&get["port"]).and_then(named_port).map(|(p, _)| p);
        assert_eq!(port, Some(http_port), "{probe} asks the HTTP port");
    }
    let drain = settings
        .get("drain-timeout-s")
        .and_then(|v| v.as_integer())
        .unwrap_or(10);
    let grace = pod["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap_or(30);
    assert!(
        grace > drain + 5,
        "grace {grace} s must outlast the drain ({drain} s)"
    );
    assert!(
        container["resources"]["requests"]["memory"]
            .as_str()
            .is_some()
            && container["resources"]["limits"]["memory"]
                .as_str()
                .is_some(),
        "memory request and limit"
    );
    assert_eq!(
        str_of(&pod["metadata"]["annotations"]["prometheus.io/port"]),
        Some(http_port.to_string().as_str())
    );

    // Services select the pods and reach their ports by name.
    let services = of_kind("Service");
    let mut protocols = BTreeSet::new();
    for svc in &services {
        for (k, v) in svc["spec"]["selector"].as_hash().into_iter().flatten() {
            assert_eq!(&labels[str_of(k).unwrap_or_default()], v, "selector {k:?}");
        }
        for p in svc["spec"]["ports"].as_vec().into_iter().flatten() {
            let target = str_of(&p["targetPort"]).unwrap_or_default();
            let (port, protocol) = named_port(target).ok_or_else(|| {
                anyhow::anyhow!("a Service targets port {target:?}, not the pod's")
            })?;
            assert_eq!(str_of(&p["protocol"]), Some(protocol.as_str()));
            assert_eq!(p["port"].as_i64(), Some(port));
            protocols.insert(protocol);
        }
    }
    assert_eq!(protocols, BTreeSet::from(["TCP".into(), "UDP".into()]));
    for pdb in of_kind("PodDisruptionBudget") {
        for (k, v) in pdb["spec"]["selector"]["matchLabels"]
            .as_hash()
            .into_iter()
            .flatten()
        {
            assert_eq!(&labels[str_of(k).unwrap_or_default()], v);
        }
    }

    // The container reads the ConfigMap's file where it is mounted.
    let args: Vec<&str> = container["args"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(str_of)
        .collect();
    let config_path = args
        .iter()
        .skip_while(|a| **a != "--config")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("serve gets no --config"))?;
    let mount = container["volumeMounts"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|m| str_of(&m["name"]) == Some("config"))
        .and_then(|m| str_of(&m["mountPath"]))
        .ok_or_else(|| anyhow::anyhow!("no config mount"))?;
    assert_eq!(*config_path, format!("{mount}/tillstream.toml"));
    token_keys_land_where_the_server_reads_them(pod)?;

    // Variables: those of tillstream-env and the pod's own are read by
    // serve (and the schema job's by schema apply).
    let mut env: Vec<(String, String)> = Vec::new();
    for generator in kustomization["configMapGenerator"]
        .as_vec()
        .into_iter()
        .flatten()
    {
        if str_of(&generator["name"]) == Some("tillstream-env") {
            for lit in generator["literals"]
                .as_vec()
                .into_iter()
                .flatten()
                .filter_map(str_of)
            {
                let (k, v) = lit.split_once('=').unwrap_or((lit, ""));
                env.push((k.to_owned(), v.to_owned()));
            }
        }
    }
    assert!(!env.is_empty(), "no tillstream-env literals");
    let serve_vars = env_vars_of(&["serve"])?;
    let schema_vars = env_vars_of(&["schema", "apply"])?;
    let pod_env: Vec<&Yaml> = container["env"].as_vec().into_iter().flatten().collect();
    let value_of = |name: &str| -> Option<&str> {
        pod_env
            .iter()
            .find(|e| str_of(&e["name"]) == Some(name))
            .and_then(|e| str_of(&e["value"]))
    };
    for e in &pod_env {
        let name = str_of(&e["name"]).unwrap_or_default();
        let referred = format!("$({name})");
        let helper = pod_env
            .iter()
            .filter_map(|o| str_of(&o["value"]))
            .any(|v| v.contains(&referred));
        assert!(
            serve_vars.contains(name) || helper,
            "serve reads no {name}, and no variable refers to it"
        );
    }

    // A cluster of nodes, each advertising its own stable name.
    assert_eq!(
        settings.get("cluster").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert!(
        sets[0]["spec"]["replicas"].as_i64().unwrap_or(1) >= 2,
        "a cluster of one"
    );
    let governing = str_of(&sets[0]["spec"]["serviceName"]).unwrap_or_default();
    let headless = services
        .iter()
        .find(|s| str_of(&s["metadata"]["name"]) == Some(governing))
        .ok_or_else(|| anyhow::anyhow!("no Service {governing:?} governs the StatefulSet"))?;
    assert_eq!(str_of(&headless["spec"]["clusterIP"]), Some("None"));
    let headless_ports: BTreeSet<&str> = headless["spec"]["ports"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(|p| str_of(&p["targetPort"]))
        .collect();
    assert_eq!(headless_ports, BTreeSet::from(["http", "quic"]));
    let field_of = |name: &str| -> Option<&str> {
        pod_env
            .iter()
            .find(|e| str_of(&e["name"]) == Some(name))
            .and_then(|e| str_of(&e["valueFrom"]["fieldRef"]["fieldPath"]))
    };
    assert_eq!(
        field_of("TILLSTREAM_SCYLLA_NODE_ID"),
        Some("metadata.name"),
        "the node id is the pod's name"
    );
    assert_eq!(field_of("POD_NAMESPACE"), Some("metadata.namespace"));
    for (var, port) in [
        ("TILLSTREAM_ADVERTISE", quic_port),
        ("TILLSTREAM_ADVERTISE_HTTP", http_port),
    ] {
        assert_eq!(
            value_of(var),
            Some(
                format!(
                    "$(TILLSTREAM_SCYLLA_NODE_ID).{governing}.$(POD_NAMESPACE).svc.cluster.local:{port}"
                )
                .as_str()
            ),
            "{var}: the pod's own name under the governing Service"
        );
    }
    for (name, _) in &env {
        assert!(
            serve_vars.contains(name) || name == "TILLSTREAM_LOG_FORMAT",
            "serve reads no {name}"
        );
    }
    let job = of_kind("Job");
    assert_eq!(job.len(), 1, "one schema Job");
    let job_args: Vec<&str> = job[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_vec()
        .into_iter()
        .flatten()
        .filter_map(str_of)
        .collect();
    assert_eq!(job_args.get(..2), Some(&["schema", "apply"][..]));
    assert!(schema_vars.contains("TILLSTREAM_SCYLLA_NODES"));

    // check-config accepts the file with those variables set (the paths
    // it names exist only in the pod: --no-environment).
    let out = Command::new(SERVER_BIN)
        .args(["check-config", "--no-environment"])
        .arg(k8s.join("tillstream.toml"))
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TILLSTREAM_SCYLLA_NODE_ID", "tillstream-0")
        .output()?;
    assert!(
        out.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The token keys are files where the server reads them: the signing key
/// at DATA_DIR/auth/signing.key, always; during a key rotation the keys
/// accepted besides it in DATA_DIR/auth/previous-keys/*.key, from an
/// optional Secret (absent between rotations).
fn token_keys_land_where_the_server_reads_them(pod: &Yaml) -> anyhow::Result<()> {
    use tillstream_auth::keys::PREVIOUS_KEYS;
    use tillstream_auth::token::SIGNING_KEY;
    let container = &pod["spec"]["containers"][0];
    let mount_of = |name: &str| -> anyhow::Result<String> {
        container["volumeMounts"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|m| str_of(&m["name"]) == Some(name))
            .and_then(|m| str_of(&m["mountPath"]))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no {name} mount"))
    };
    let (data, auth) = (mount_of("data")?, mount_of("auth")?);
    let volume = pod["spec"]["volumes"]
        .as_vec()
        .into_iter()
        .flatten()
        .find(|v| str_of(&v["name"]) == Some("auth"))
        .ok_or_else(|| anyhow::anyhow!("no auth volume"))?;
    // (file in the pod, from an optional Secret) of every key file.
    let mut keys = Vec::new();
    for source in volume["projected"]["sources"]
        .as_vec()
        .into_iter()
        .flatten()
    {
        let secret = &source["secret"];
        for item in secret["items"].as_vec().into_iter().flatten() {
            let path = format!("{auth}/{}", str_of(&item["path"]).unwrap_or_default());
            if path.ends_with(".key") {
                keys.push((path, secret["optional"].as_bool() == Some(true)));
            }
        }
    }
    assert!(
        keys.contains(&(format!("{data}/{SIGNING_KEY}"), false)),
        "the signing key is not mounted at DATA_DIR/{SIGNING_KEY}: {keys:?}"
    );
    let previous: Vec<&(String, bool)> = keys
        .iter()
        .filter(|(p, _)| p.starts_with(&format!("{data}/{PREVIOUS_KEYS}/")))
        .collect();
    assert!(
        !previous.is_empty() && previous.iter().all(|(_, optional)| *optional),
        "the previous keys are not an optional Secret in DATA_DIR/{PREVIOUS_KEYS}/: {keys:?}"
    );
    Ok(())
}

#[test]
#[cfg_attr(
    not(has_kubectl),
    ignore = "needs kubectl (for `kubectl kustomize`) on PATH when built"
)]
fn kustomize_renders_the_base_with_secrets_in_place() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let base = tmp.path().join("kubernetes");
    std::fs::create_dir_all(base.join("secrets"))?;
    for entry in std::fs::read_dir(deploy_dir().join("kubernetes"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), base.join(entry.file_name()))?;
        }
    }
    for f in ["tls.crt", "tls.key", "signing.key"] {
        std::fs::write(base.join("secrets").join(f), "placeholder\n")?;
    }
    let (rendered, docs) = kustomize(&base, "the base")?;
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| str_of(&d["kind"])).collect();
    for kind in [
        "StatefulSet",
        "Service",
        "ConfigMap",
        "Secret",
        "Job",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} rendered");
    }
    // Every object lands in the namespace, and the pod refers to the
    // generated (hashed) ConfigMap.
    assert!(rendered.contains("name: tillstream-config-"), "{rendered}");
    // Between rotations the pod names the optional Secret of previous keys
    // as it is (there is none); during one, the kustomization's commented
    // generator, enabled, renames it with its hash (a change rolls the pods).
    assert!(
        projected_secrets(&docs).contains(&"tillstream-previous-signing-keys".to_owned()),
        "{rendered}"
    );
    let kustomization = std::fs::read_to_string(base.join("kustomization.yaml"))?;
    let commented = "  # - name: tillstream-previous-signing-keys\n  #   files:\n  #     - next.key=secrets/next.key\n  #     - previous.key=secrets/previous.key\n";
    anyhow::ensure!(
        kustomization.contains(commented),
        "kustomization.yaml has no commented generator of previous keys"
    );
    std::fs::write(
        base.join("kustomization.yaml"),
        kustomization.replace(commented, &commented.replace("  # ", "  ")),
    )?;
    for f in ["next.key", "previous.key"] {
        std::fs::write(base.join("secrets").join(f), "placeholder\n")?;
    }
    let (rendered, docs) = kustomize(&base, "with previous keys")?;
    let secrets: Vec<String> = docs
        .iter()
        .filter(|d| str_of(&d["kind"]) == Some("Secret"))
        .filter_map(|d| str_of(&d["metadata"]["name"]).map(str::to_owned))
        .filter(|n| n.starts_with("tillstream-previous-signing-keys-"))
        .collect();
    assert_eq!(secrets.len(), 1, "{rendered}");
    assert!(
        projected_secrets(&docs).contains(&secrets[0]),
        "the pod does not name the generated Secret: {rendered}"
    );
    Ok(())
}

/// The Secrets the StatefulSet's pods project into their volumes.
/// `kubectl kustomize base`: the rendered text and its documents.
fn kustomize(base: &Path, what: &str) -> anyhow::Result<(String, Vec<Yaml>)> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(base)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubectl kustomize, {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout).into_owned();
    let docs = YamlLoader::load_from_str(&rendered)?;
    Ok((rendered, docs))
}

fn projected_secrets(docs: &[Yaml]) -> Vec<String> {
    docs.iter()
        .filter(|d| str_of(&d["kind"]) == Some("StatefulSet"))
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["volumes"]
                .as_vec()
                .into_iter()
                .flatten()
        })
        .flat_map(|v| v["projected"]["sources"].as_vec().into_iter().flatten())
        .filter_map(|s| str_of(&s["secret"]["name"]).map(str::to_owned))
        .collect()
}
