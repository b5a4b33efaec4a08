//! Services: Endpoints and EndpointSlices from ready pods, and a TCP proxy on each ClusterIP
//! port (a loopback address) that forwards to a ready endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use serde_json::{Value, json};

use crate::cluster::{Cluster, WriteOpts};
use crate::selectors::LabelSelector;

struct Proxy {
    backends: Arc<RwLock<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

fn proxies() -> &'static Mutex<HashMap<String, Proxy>> {
    static P: OnceLock<Mutex<HashMap<String, Proxy>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(HashMap::new()))
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A Service port's targetPort resolved against one pod (numbers, or named container ports).
fn resolve_target(port: &Value, pod: &Value) -> Option<i64> {
    match &port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => match s.parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
                .find(|p| p["name"].as_str() == Some(s.as_str()))
                .and_then(|p| p["containerPort"].as_i64()),
        },
        _ => port["port"].as_i64(),
    }
}

fn upsert(cluster: &Cluster, group: &str, plural: &str, ns: &str, obj: Value) {
    let Ok(rt) = cluster.rt(group, plural) else {
        return;
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    match cluster.store.get(&rt.gr(), ns, &name) {
        None => {
            let _ = cluster.create(&rt, ns, obj, &WriteOpts::system("endpoint-controller"));
        }
        Some(cur) => {
            let mut n = (*cur).clone();
            let mut changed = false;
            for k in ["subsets", "endpoints", "ports", "addressType"] {
                if obj.get(k) != cur.get(k) {
                    changed = true;
                    match obj.get(k) {
                        Some(v) => n[k] = v.clone(),
                        None => {
                            if let Some(m) = n.as_object_mut() {
                                m.remove(k);
                            }
                        }
                    }
                }
            }
            if changed {
                let _ =
                    cluster.update(&rt, ns, &name, n, &WriteOpts::system("endpoint-controller"));
            }
        }
    }
}

pub fn reconcile(cluster: &Arc<Cluster>) {
    let (svcs, _) = cluster.store.list("/services", None);
    let (pods, _) = cluster.store.list("/pods", None);
    let mut wanted: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    for svc in &svcs {
        let ns = svc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = svc["metadata"]["name"].as_str().unwrap_or("").to_string();
        let Some(sel) = svc["spec"]["selector"]
            .as_object()
            .filter(|m| !m.is_empty())
        else {
            continue;
        };
        let selector = LabelSelector::from_object(&json!({"matchLabels": sel}));
        let members: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| {
                p["metadata"]["namespace"] == json!(ns)
                    && selector.matches(&p["metadata"]["labels"])
            })
            .filter(|p| {
                p["status"]["podIP"].as_str().is_some()
                    && !matches!(
                        p["status"]["phase"].as_str(),
                        Some("Succeeded") | Some("Failed")
                    )
            })
            .collect();
        let ports: Vec<Value> = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();
        let mut slice_eps = vec![];
        let mut ready_addrs = vec![];
        let mut not_ready = vec![];
        // Headless Services that publish pods before they are ready (rendezvous of Indexed Jobs).
        let publish_not_ready = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
        for p in &members {
            let ip = p["status"]["podIP"].as_str().unwrap_or("");
            let ready =
                publish_not_ready || (is_ready(p) && p["metadata"]["deletionTimestamp"].is_null());
            let target = json!({"kind": "Pod", "namespace": ns, "name": p["metadata"]["name"], "uid": p["metadata"]["uid"]});
            let mut slice_ep = json!({"addresses": [ip], "conditions": {"ready": ready, "serving": is_ready(p), "terminating": !p["metadata"]["deletionTimestamp"].is_null()},
                "targetRef": target, "nodeName": p["spec"]["nodeName"]});
            let mut addr =
                json!({"ip": ip, "nodeName": p["spec"]["nodeName"], "targetRef": target});
            // A pod whose subdomain is this Service is known by its hostname under it.
            if let Some(h) = p["spec"]["hostname"].as_str().filter(|h| !h.is_empty())
                && p["spec"]["subdomain"].as_str() == Some(name.as_str())
            {
                addr["hostname"] = json!(h);
                slice_ep["hostname"] = json!(h);
            }
            slice_eps.push(slice_ep);
            if ready {
                ready_addrs.push(addr)
            } else {
                not_ready.push(addr)
            }
        }
        let sample = members.first().map(|p| (***p).clone()).unwrap_or(json!({}));
        let ep_ports: Vec<Value> = ports.iter().map(|p| {
            let mut o = json!({"port": resolve_target(p, &sample).unwrap_or(0), "protocol": p["protocol"].as_str().unwrap_or("TCP")});
            if let Some(n) = p["name"].as_str() { o["name"] = json!(n); }
            o
        }).collect();
        let mut subset = json!({"ports": ep_ports});
        if !ready_addrs.is_empty() {
            subset["addresses"] = json!(ready_addrs);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        let subsets = if members.is_empty() {
            None
        } else {
            Some(json!([subset]))
        };
        let mut ep = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": {"endpoints.kubernetes.io/managed-by": "endpoint-controller"}}});
        if let Some(s) = subsets {
            ep["subsets"] = s;
        }
        upsert(cluster, "", "endpoints", &ns, ep);
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": format!("{name}-sim"), "namespace": ns, "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [crate::controllers::owner_ref(svc, true)]},
            "endpoints": slice_eps, "ports": ep_ports});
        upsert(cluster, "discovery.k8s.io", "endpointslices", &ns, slice);
        let Some(cip) = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|c| c.starts_with(&format!("127.{}.", cluster.cfg.net)))
        else {
            continue;
        };
        for p in &ports {
            let Some(port) = p["port"].as_i64() else {
                continue;
            };
            let backends: Vec<SocketAddr> = members
                .iter()
                .filter(|m| is_ready(m) && m["metadata"]["deletionTimestamp"].is_null())
                .filter_map(|m| {
                    Some(SocketAddr::new(
                        m["status"]["podIP"].as_str()?.parse().ok()?,
                        u16::try_from(resolve_target(p, m)?).ok()?,
                    ))
                })
                .collect();
            wanted.insert(format!("{cip}:{port}"), backends);
        }
    }
    let mut px = proxies().lock().unwrap_or_else(|e| e.into_inner());
    px.retain(|k, p| {
        let keep = wanted.contains_key(k);
        if !keep {
            p.task.abort();
        }
        keep
    });
    for (addr, backends) in wanted {
        match px.get(&addr) {
            Some(p) => {
                *p.backends.write().unwrap_or_else(|e| e.into_inner()) = backends;
            }
            None => {
                let Ok(sa) = addr.parse::<SocketAddr>() else {
                    continue;
                };
                let listener = match std::net::TcpListener::bind(sa).and_then(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                }) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "service proxy bind");
                        continue;
                    }
                };
                let b = Arc::new(RwLock::new(backends));
                let b2 = b.clone();
                let task = tokio::spawn(async move {
                    let mut rr = 0usize;
                    loop {
                        let Ok((mut inbound, _)) = listener.accept().await else {
                            continue;
                        };
                        let list = b2.read().unwrap_or_else(|e| e.into_inner()).clone();
                        if list.is_empty() {
                            // No ready endpoints: refuse, as kube-proxy's REJECT rule does.
                            drop(inbound);
                            continue;
                        }
                        rr = rr.wrapping_add(1);
                        let target = list[rr % list.len()];
                        tokio::spawn(async move {
                            if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            }
                        });
                    }
                });
                px.insert(addr, Proxy { backends: b, task });
            }
        }
    }
}
