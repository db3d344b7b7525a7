//! `warren saga graph`: a definition drawn as a Mermaid flowchart.

use std::path::Path;
use std::process::ExitCode;

use contracts::Schemas;
use saga::Definition;
use serde_json::json;

use crate::exit;
use crate::output;
use crate::settings::Settings;

pub(super) fn graph(
    settings: &Settings,
    name: Option<&str>,
    file: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let definition = match file {
        Some(file) => {
            let definition = Definition::load(file, &Schemas::embedded())?;
            if let Some(name) = name
                && name != definition.name
            {
                anyhow::bail!(
                    "{} defines {:?}, not {name:?}",
                    file.display(),
                    definition.name
                );
            }
            definition
        }
        None => {
            let name = name.unwrap_or_default();
            let definitions = crate::run::definitions(settings)?;
            let known: Vec<String> = definitions.iter().map(|d| d.name.clone()).collect();
            match definitions.into_iter().find(|d| d.name == name) {
                Some(definition) => definition,
                None => {
                    eprintln!(
                        "no saga definition named {name:?}; known: {}",
                        known.join(", ")
                    );
                    return Ok(ExitCode::from(exit::NOT_FOUND));
                }
            }
        }
    };
    let text = mermaid(&definition);
    if json {
        output::json(&json!({"saga": definition.name, "mermaid": text}))?;
    } else {
        print!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

fn node_id(prefix: &str, name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{safe}")
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "#quot;"))
}

/// Where compensation goes once everything after step `upto` is settled: the compensation of
/// the latest step at or before it that has one, or the end.
fn undo_target(definition: &Definition, upto: Option<usize>) -> String {
    upto.and_then(|u| {
        (0..=u)
            .rev()
            .find(|&j| definition.steps[j].compensation.is_some())
    })
    .map_or_else(
        || "compensated".to_owned(),
        |j| node_id("undo", &definition.steps[j].name),
    )
}

/// A Mermaid flowchart of a definition, as the state machine runs it: solid edges forward,
/// dotted edges on failure, timeouts and exhausted compensations.
fn mermaid(definition: &Definition) -> String {
    let mut lines = vec![
        "flowchart TD".to_owned(),
        format!("    %% saga {}", definition.name),
        "    start((start))".to_owned(),
    ];
    let pivot = definition.pivot();
    let past_pivot = |i: usize| pivot.is_some_and(|p| i > p);
    for step in &definition.steps {
        let mut marks = Vec::new();
        if step.pivot {
            marks.push("PIVOT".to_owned());
        }
        if step.retriable {
            marks.push("retriable".to_owned());
        }
        if let Some(timeout) = step.timeout {
            marks.push(format!("timeout {}", saga::duration::format(timeout)));
        }
        if step.attempts > 1 {
            marks.push(format!("{} attempts", step.attempts));
        }
        let label = quoted(&format!("{}<br/>{}", step.name, marks.join(", ")));
        let id = node_id("step", &step.name);
        lines.push(if step.pivot {
            format!("    {id}{{{{{label}}}}}")
        } else if step.retriable {
            format!("    {id}[[{label}]]")
        } else {
            format!("    {id}[{label}]")
        });
    }
    for step in definition.steps.iter().rev() {
        if let Some(c) = &step.compensation {
            let short = c.command.rsplit('.').next().unwrap_or(&c.command);
            let label = quoted(&format!(
                "{short}<br/>{}<br/>undoes {}",
                c.command, step.name
            ));
            lines.push(format!("    {}({label})", node_id("undo", &step.name)));
        }
    }
    lines.push("    completed([completed])".to_owned());
    lines.push("    compensated([compensated])".to_owned());
    lines.push("    failed([failed])".to_owned());

    // Forward: each edge carries the reply that ends a step and the command that starts the next.
    let Some(first) = definition.steps.first() else {
        lines.push("    start --> completed".to_owned());
        return lines.join("\n") + "\n";
    };
    lines.push(format!(
        "    start -->|{}| {}",
        quoted(&first.command),
        node_id("step", &first.name)
    ));
    for (i, step) in definition.steps.iter().enumerate() {
        let id = node_id("step", &step.name);
        match definition.steps.get(i + 1) {
            Some(next) => lines.push(format!(
                "    {id} -->|{}| {}",
                quoted(&format!("{}, then {}", step.success, next.command)),
                node_id("step", &next.name)
            )),
            None => lines.push(format!("    {id} -->|{}| completed", quoted(&step.success))),
        }
        if step.attempts > 1 {
            lines.push(format!(
                "    {id} -->|{}| {id}",
                quoted(&format!(
                    "timeout: {} again, up to {} attempts",
                    step.command, step.attempts
                ))
            ));
        }
        // A refusal means the step did nothing: compensate what came before. A timeout after
        // the last attempt leaves the outcome unknown: compensate the step itself too.
        let (refused, timed_out) = if past_pivot(i) {
            ("failed".to_owned(), "failed".to_owned())
        } else {
            (
                undo_target(definition, i.checked_sub(1)),
                undo_target(definition, Some(i)),
            )
        };
        for failure in &step.failure {
            lines.push(format!("    {id} -.->|{}| {refused}", quoted(failure)));
        }
        let timeout = if step.attempts > 1 {
            format!("timeout after {} attempts", step.attempts)
        } else {
            "timeout".to_owned()
        };
        lines.push(format!("    {id} -.->|{}| {timed_out}", quoted(&timeout)));
    }
    // Backward: compensations in reverse order, each re-sent with back-off until it runs out.
    let retry = &definition.compensation_retry;
    for (i, step) in definition.steps.iter().enumerate().rev() {
        let Some(c) = &step.compensation else {
            continue;
        };
        let id = node_id("undo", &step.name);
        lines.push(format!(
            "    {id} -->|{}| {}",
            quoted(&c.done),
            undo_target(definition, i.checked_sub(1))
        ));
        lines.push(format!(
            "    {id} -.->|{}| failed",
            quoted(&format!("no {} after {} attempts", c.done, retry.attempts))
        ));
    }
    lines.push("    classDef pivot stroke-width:4px".to_owned());
    lines.push("    classDef undo stroke-dasharray:5 3".to_owned());
    lines.push("    classDef good fill:#d4f7d4".to_owned());
    lines.push("    classDef bad fill:#f7d4d4".to_owned());
    if let Some(p) = pivot {
        lines.push(format!(
            "    class {} pivot",
            node_id("step", &definition.steps[p].name)
        ));
    }
    let undo: Vec<String> = definition
        .steps
        .iter()
        .filter(|s| s.compensation.is_some())
        .map(|s| node_id("undo", &s.name))
        .collect();
    if !undo.is_empty() {
        lines.push(format!("    class {} undo", undo.join(",")));
    }
    lines.push("    class completed,compensated good".to_owned());
    lines.push("    class failed bad".to_owned());
    lines.join("\n") + "\n"
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::mermaid;
    use crate::saga_cli::fixtures::checkout;

    #[test]
    fn the_checkout_graph_shows_both_paths_and_the_terminals() {
        let text = mermaid(&checkout());
        assert!(text.starts_with("flowchart TD\n"), "{text}");
        for expected in [
            // Forward, command and success reply on the edges.
            r#"start -->|"order.cmd.create"| step_create_order"#,
            r#"step_create_order -->|"order.evt.created, then inventory.cmd.reserve"| step_reserve_inventory"#,
            r#"step_reserve_inventory -->|"inventory.evt.reserved, then payment.cmd.charge"| step_charge_payment"#,
            r#"step_charge_payment -->|"payment.evt.charged, then order.cmd.confirm"| step_confirm_order"#,
            r#"step_confirm_order -->|"order.evt.confirmed"| completed"#,
            // The pivot and the retriable step are marked.
            r#"step_charge_payment{{"charge_payment<br/>PIVOT, timeout 10s"}}"#,
            r#"step_confirm_order[["confirm_order<br/>retriable, timeout 10s, 20 attempts"]]"#,
            "class step_charge_payment pivot",
            r#"step_confirm_order -->|"timeout: order.cmd.confirm again, up to 20 attempts"| step_confirm_order"#,
            // Failures enter the compensation path just before the failing step.
            r#"step_create_order -.->|"order.evt.rejected"| compensated"#,
            r#"step_reserve_inventory -.->|"inventory.evt.reservation_failed"| undo_create_order"#,
            r#"step_charge_payment -.->|"payment.evt.declined"| undo_reserve_inventory"#,
            // A timeout compensates the step itself, whose outcome is unknown.
            r#"step_charge_payment -.->|"timeout"| undo_charge_payment"#,
            r#"step_create_order -.->|"timeout after 2 attempts"| undo_create_order"#,
            // Past the pivot, only forward or an operator.
            r#"step_confirm_order -.->|"timeout after 20 attempts"| failed"#,
            // The compensation path, in reverse.
            r#"undo_charge_payment("refund<br/>payment.cmd.refund<br/>undoes charge_payment")"#,
            r#"undo_reserve_inventory("release<br/>inventory.cmd.release<br/>undoes reserve_inventory")"#,
            r#"undo_create_order("cancel<br/>order.cmd.cancel<br/>undoes create_order")"#,
            r#"undo_charge_payment -->|"payment.evt.refunded"| undo_reserve_inventory"#,
            r#"undo_reserve_inventory -->|"inventory.evt.released"| undo_create_order"#,
            r#"undo_create_order -->|"order.evt.cancelled"| compensated"#,
            r#"undo_create_order -.->|"no order.evt.cancelled after 8 attempts"| failed"#,
            "completed([completed])",
            "compensated([compensated])",
            "failed([failed])",
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
        // The compensation nodes are declared latest first.
        let position = |s: &str| text.find(s).unwrap();
        assert!(position("undo_charge_payment(") < position("undo_reserve_inventory("));
        assert!(position("undo_reserve_inventory(") < position("undo_create_order("));
        // Nothing on a confirmation failure goes backwards: confirm_order has no compensation.
        assert!(!text.contains("undo_confirm_order"));
    }
}
