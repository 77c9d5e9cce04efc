//! The deployment files in deploy/, checked offline: there is no
//! Kubernetes or Nomad cluster here, so these tests validate and read the
//! files; they do not claim the workloads ran. (deploy/swarm/stack.yml
//! runs for real in swarm.rs.)

use std::fs;
use std::process::Command;

use e2e::*;
use serde_json::Value;

fn yaml(path: &str) -> Value {
    let text = fs::read_to_string(root().join(path)).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|err| panic!("{path} is not YAML: {err}"))
}

/// The `--shutdown-timeout` the server is started with (`args`/`command`).
fn shutdown_timeout(args: &Value) -> u64 {
    let args: Vec<&str> = args
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let at = args
        .iter()
        .position(|a| *a == "--shutdown-timeout")
        .unwrap_or_else(|| panic!("no --shutdown-timeout in {args:?}"));
    args[at + 1].parse().unwrap()
}

/// `"12s"` into seconds.
fn seconds(text: &str) -> u64 {
    text.strip_suffix('s').unwrap().parse().unwrap()
}

/// The offline validator (PyPI `kubernetes-validate`, which ships the
/// schemas of every Kubernetes version): `cargo xtask test` installs it into
/// target/tools and passes its path.
fn kubernetes_validate() -> String {
    let program = std::env::var("SYDNEY_TEST_KUBERNETES_VALIDATE")
        .unwrap_or_else(|_| "kubernetes-validate".to_owned());
    let found = Command::new(&program).arg("--version").output();
    assert!(
        found.is_ok_and(|out| out.status.success()),
        "`{program}` is not installed: run the tests with `cargo xtask test`, which installs \
         the PyPI package kubernetes-validate into target/tools"
    );
    program
}

#[test]
fn kubernetes_manifests_pass_strict_offline_schema_validation() {
    let program = kubernetes_validate();
    for file in ["deployment.yaml", "service.yaml"] {
        let path = root().join("deploy/kubernetes").join(file);
        // Kubernetes 1.30 is the first with the preStop sleep action on by
        // default; also check the newest schemas the validator ships.
        for version in ["1.30.0", "latest"] {
            let mut command = Command::new(&program);
            command.arg("--strict");
            if version != "latest" {
                command.args(["-k", version]);
            }
            let ran = run(command.arg(&path));
            ran.expect_success();
            assert!(ran.stdout().contains("passed"), "{ran}");
        }
    }
}

#[test]
fn kubernetes_deployment_runs_non_root_read_only_with_http_probes_and_a_drain() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let service = yaml("deploy/kubernetes/service.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["runAsUser"].to_string(),
        bundle_image::DEFAULT_USER,
        "the pod's user should be the image's"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );

    // /tmp is an emptyDir: where the bundle unpacks.
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/tmp")
        .expect("a volume at /tmp");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the /tmp volume");
    assert!(volume["emptyDir"].is_object(), "{volume}");

    // Probes by HTTP from the kubelet, never exec probes.
    for probe in ["readinessProbe", "livenessProbe"] {
        let probe = &container[probe];
        assert_eq!(probe["httpGet"]["path"], "/", "{probe}");
        assert_eq!(probe["httpGet"]["port"], "http", "{probe}");
        assert!(probe.get("exec").is_none(), "{probe}");
    }
    let ports = container["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "http" && p["containerPort"] == 8080)
    );

    // A preStop sleep, then the drain, within the grace period.
    let pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep");
    assert!(pre_stop > 0);
    let drain = shutdown_timeout(&container["args"]);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > pre_stop + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + drain {drain}"
    );
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );

    // The Service selects these pods and targets the named port.
    assert_eq!(service["kind"], "Service");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[key], value, "the Service selects {key}={value}");
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
}

#[test]
fn swarm_stack_file_has_start_first_rollback_a_drain_and_a_read_only_root() {
    let stack = yaml("deploy/swarm/stack.yml");
    let service = &stack["services"]["sydney"];
    assert_eq!(
        service["healthcheck"]["test"],
        serde_json::json!(["CMD", "/app", "healthcheck"])
    );
    let update = &service["deploy"]["update_config"];
    assert_eq!(update["order"], "start-first");
    assert_eq!(update["failure_action"], "rollback");
    assert_eq!(service["read_only"], true);
    let tmpfs = service["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["target"] == "/tmp")
        .expect("a volume at /tmp");
    assert_eq!(tmpfs["type"], "tmpfs");
    let drain = shutdown_timeout(&service["command"]);
    let grace = seconds(service["stop_grace_period"].as_str().unwrap());
    assert!(
        grace > drain,
        "stop_grace_period {grace}s must exceed the drain ({drain}s)"
    );
}

/// The SHA-256 of `bytes` as 64 hex digits.
fn sha256_hex(path: &std::path::Path) -> String {
    let ran = run(Command::new("sha256sum").arg(path));
    ran.expect_success();
    ran.stdout().split_whitespace().next().unwrap().to_owned()
}

#[test]
fn nomad_job_parses_and_verifies_the_real_bundle_by_checksum() {
    let text = fs::read_to_string(root().join("deploy/nomad/sydney.nomad.hcl")).unwrap();
    let body = hcl::parse(&text).unwrap_or_else(|err| panic!("sydney.nomad.hcl: {err}"));

    // The checksum is a variable with a 64-hex-digit validation, filled in
    // with `-var bundle_sha256=...` (the bundle changes with every build,
    // so no fixed value could stay true).
    let variables: Vec<String> = body
        .blocks()
        .filter(|b| b.identifier() == "variable")
        .map(|b| b.labels()[0].as_str().to_owned())
        .collect();
    assert_eq!(variables, ["bundle_url", "bundle_sha256"]);
    assert!(text.contains(r#"regex("^[0-9a-f]{64}$", var.bundle_sha256)"#));

    // Evaluate the job as Nomad would for the real bundle. `${NOMAD_...}`
    // names are runtime interpolations, which Nomad leaves as they are.
    let bundle = &artifacts().bundle;
    let sha256 = sha256_hex(bundle);
    assert_eq!(sha256.len(), 64);
    let mut context = hcl::eval::Context::new();
    let vars = hcl::value::Map::from_iter([
        (
            "bundle_url".to_owned(),
            hcl::Value::from("https://releases.example.invalid/sydney-bundle"),
        ),
        ("bundle_sha256".to_owned(), hcl::Value::from(sha256.clone())),
    ]);
    context.declare_var("var", hcl::Value::Object(vars));
    for runtime in ["NOMAD_IP_http", "NOMAD_PORT_http", "NOMAD_TASK_DIR"] {
        context.declare_var(runtime, format!("${{{runtime}}}"));
    }
    let job = body
        .blocks()
        .find(|b| b.identifier() == "job")
        .expect("a job block");
    use hcl::eval::Evaluate;
    let job = job
        .evaluate(&context)
        .unwrap_or_else(|err| panic!("evaluating the job: {err}"));
    let job: Value = hcl::from_body(hcl::Body::from(vec![hcl::Structure::from(job)]))
        .unwrap_or_else(|err| panic!("reading the job: {err}"));
    let group = &job["job"]["sydney"]["group"]["sydney"];
    let task = &group["task"]["sydney"];
    assert_eq!(task["driver"], "exec");
    let artifact = &task["artifact"];
    assert_eq!(
        artifact["options"]["checksum"],
        format!("sha256:{sha256}"),
        "the artifact must be checked against the bundle's SHA-256"
    );
    assert_eq!(artifact["destination"], task["config"]["command"]);
    let args = &task["config"]["args"];
    assert_eq!(args[0], "start");
    assert!(
        args.as_array()
            .unwrap()
            .contains(&Value::from("${NOMAD_PORT_http}"))
    );
    let drain = shutdown_timeout(args);
    assert!(seconds(task["kill_timeout"].as_str().unwrap()) > drain);
    let check = &group["service"]["check"];
    assert_eq!(check["type"], "http", "{group}");
    assert_eq!(check["path"], "/");
    assert_eq!(group["update"]["auto_revert"], true);
}
