//! The template environment (minijinja): the templates embedded in the
//! binary (`templates/`), each overridable by a file of the same name in a
//! project's `templates/` folder.

use anyhow::Context;
use minijinja::{Environment, UndefinedBehavior};
use std::path::{Path, PathBuf};

/// Templates by name, project overrides first.
pub struct Templates {
    env: Environment<'static>,
    /// Where each template came from (for the build record and messages).
    sources: Vec<(String, TemplateSource)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    Embedded,
    Project(PathBuf),
}

impl Templates {
    /// The embedded templates overlaid by `project_dir/templates/*.j2`
    /// (when `project_dir` is given and the folder exists).
    pub fn load(project_dir: Option<&Path>) -> anyhow::Result<Templates> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        env.add_filter("py", |s: String| crate::hash_table::python_str(&s));
        let mut sources = vec![];
        let mut texts: Vec<(String, String, TemplateSource)> = vec![];
        for (name, bytes) in crate::embedded::TEMPLATES {
            let text = String::from_utf8(bytes.to_vec())
                .with_context(|| format!("embedded template {name} is not UTF-8"))?;
            texts.push((name.to_string(), text, TemplateSource::Embedded));
        }
        if let Some(dir) = project_dir
            .map(|p| p.join("templates"))
            .filter(|d| d.is_dir())
        {
            for e in std::fs::read_dir(&dir)? {
                let path = e?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if !name.ends_with(".j2") {
                    continue;
                }
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read template {}", path.display()))?;
                texts.retain(|(n, _, _)| n != name);
                texts.push((name.to_string(), text, TemplateSource::Project(path)));
            }
        }
        for (name, text, source) in texts {
            let shown = match &source {
                TemplateSource::Embedded => format!("{name} (embedded)"),
                TemplateSource::Project(p) => p.display().to_string(),
            };
            env.add_template_owned(name.clone(), text)
                .with_context(|| format!("template {shown} does not parse"))?;
            sources.push((name, source));
        }
        Ok(Templates { env, sources })
    }

    /// Renders template `name` with `ctx`.
    pub fn render(&self, name: &str, ctx: impl serde::Serialize) -> anyhow::Result<String> {
        let t = self
            .env
            .get_template(name)
            .with_context(|| format!("no template named {name}"))?;
        t.render(minijinja::Value::from_serialize(&ctx))
            .map_err(|e| {
                let origin = match self.source(name) {
                    Some(TemplateSource::Project(p)) => p.display().to_string(),
                    _ => format!("{name} (embedded)"),
                };
                anyhow::anyhow!("cannot render template {origin}: {e:#}")
            })
    }

    pub fn source(&self, name: &str) -> Option<&TemplateSource> {
        self.sources.iter().find(|(n, _)| n == name).map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_template_overrides_the_embedded_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/_hash.py.j2"), "X={{ n | py }}\n").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let out = t
            .render("_hash.py.j2", serde_json::json!({"n": "a\"b"}))
            .unwrap();
        assert_eq!(out, "X=\"a\\\"b\"\n");
        assert!(matches!(
            t.source("_hash.py.j2"),
            Some(TemplateSource::Project(_))
        ));
        assert_eq!(t.source("manifest.py.j2"), Some(&TemplateSource::Embedded));
    }

    #[test]
    fn missing_variable_is_an_error_not_an_empty_string() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/x.j2"), "{{ nope }}").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let err = t
            .render("x.j2", serde_json::json!({}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.j2"), "{err}");
    }
}
