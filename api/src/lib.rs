//! tailor's API: the four custom resources in group `tailor.dev`, version `v1alpha1`.
