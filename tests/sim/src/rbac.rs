//! RBAC authorization: Roles, ClusterRoles and their bindings, evaluated as the apiserver's
//! RBAC authorizer does, with its 403 wording.

use serde_json::Value;

use crate::auth::User;
use crate::cluster::Cluster;
use crate::status::ApiError;

/// One request's authorization attributes.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

fn matches_list(list: &Value, want: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|x| x == "*" || x == want)
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !matches_list(&rule["verbs"], &a.verb) || !matches_list(&rule["apiGroups"], &a.group) {
        return false;
    }
    let full = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let res_ok = rule["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| {
            r == "*"
                || r == full
                || (!a.subresource.is_empty() && r == format!("*/{}", a.subresource))
                || (!a.subresource.is_empty() && r.strip_suffix("/*") == Some(a.resource.as_str()))
        });
    if !res_ok {
        return false;
    }
    match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => {
            names.iter().any(|n| n.as_str() == Some(a.name.as_str()))
        }
        _ => true,
    }
}

fn subject_matches(subject: &Value, user: &User, binding_ns: &str) -> bool {
    match subject["kind"].as_str() {
        Some("User") => subject["name"].as_str() == Some(user.name.as_str()),
        Some("Group") => subject["name"]
            .as_str()
            .is_some_and(|g| user.groups.iter().any(|x| x == g)),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(binding_ns);
            let name = subject["name"].as_str().unwrap_or("");
            user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn role_rules(cluster: &Cluster, role_ref: &Value, ns: &str) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or("");
    let role = match role_ref["kind"].as_str() {
        Some("ClusterRole") => {
            cluster
                .store
                .get("rbac.authorization.k8s.io/clusterroles", "", name)
        }
        Some("Role") => cluster
            .store
            .get("rbac.authorization.k8s.io/roles", ns, name),
        _ => None,
    };
    let Some(role) = role else { return vec![] };
    let mut rules: Vec<Value> = role["rules"].as_array().cloned().unwrap_or_default();
    // Aggregated ClusterRoles collect the rules of the roles their selectors match.
    if let Some(sels) = role["aggregationRule"]["clusterRoleSelectors"].as_array() {
        let (all, _) = cluster
            .store
            .list("rbac.authorization.k8s.io/clusterroles", None);
        for sel in sels {
            let s = crate::selectors::LabelSelector::from_object(sel);
            for r in &all {
                if r["metadata"]["name"] != role["metadata"]["name"]
                    && s.matches(&r["metadata"]["labels"])
                {
                    rules.extend(r["rules"].as_array().cloned().unwrap_or_default());
                }
            }
        }
    }
    rules
}

pub fn allowed(cluster: &Cluster, user: &User, a: &Attributes) -> bool {
    if user.is_admin() {
        return true;
    }
    let (crbs, _) = cluster
        .store
        .list("rbac.authorization.k8s.io/clusterrolebindings", None);
    for b in crbs {
        if b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| subject_matches(s, user, ""))
            && role_rules(cluster, &b["roleRef"], "")
                .iter()
                .any(|r| rule_allows(r, a))
        {
            return true;
        }
    }
    if !a.namespace.is_empty() {
        let (rbs, _) = cluster
            .store
            .list("rbac.authorization.k8s.io/rolebindings", Some(&a.namespace));
        for b in rbs {
            if b["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| subject_matches(s, user, &a.namespace))
                && role_rules(cluster, &b["roleRef"], &a.namespace)
                    .iter()
                    .any(|r| rule_allows(r, a))
            {
                return true;
            }
        }
    }
    false
}

/// The apiserver's message: `jobs.batch is forbidden: User "u" cannot create resource "jobs" in
/// API group "batch" in the namespace "ns"`.
pub fn forbidden(user: &User, a: &Attributes) -> ApiError {
    let res = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let qualified = if a.group.is_empty() {
        res.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let subject = if a.name.is_empty() {
        qualified
    } else {
        format!("{qualified} \"{}\"", a.name)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_string()
    } else {
        format!("in the namespace \"{}\"", a.namespace)
    };
    let mut e = ApiError::forbidden(format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
        user.name, a.verb, a.group
    ));
    let mut d = serde_json::json!({"name": a.name, "kind": a.resource});
    if !a.group.is_empty() {
        d["group"] = serde_json::json!(a.group);
    }
    e.details = Some(d);
    e
}
