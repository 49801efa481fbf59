//! Disease management forms: first- and second-line drugs, dosing, follow-up.
//!
//! Invariant: these forms never list a disease's symptoms (see `presentation`).

use super::form::{singular, Ctx, Form, Rendered};
use super::text::{article, list_and, pick};
use crate::error::Result;
use rand::Rng;

/// The management forms.
pub const FORMS: &[Form] = &[
    Form { name: "guideline_snippet", run: guideline },
    Form { name: "treatment_qa", run: treatment_qa },
    Form { name: "management_paragraph", run: management },
    Form { name: "discharge_summary", run: discharge },
    Form { name: "research_abstract", run: abstract_ },
    Form { name: "pharmacist_note", run: pharmacist },
    Form { name: "formulary_table", run: formulary },
];

fn guideline(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let (f, s) = (&w.drugs[d.first_line], &w.drugs[d.second_line]);
    let section = format!("{}.{}", ctx.rng.gen_range(1..9), ctx.rng.gen_range(1..9));
    let first = pick(
        &mut ctx.rng,
        &[
            "In patients with {D}, start {X} ({c}) as first-line therapy.",
            "{X} is recommended first line for {D}.",
            "First-line treatment for {D}: {X}, {a} {c1}.",
        ],
    )
    .replace("{D}", &d.name)
    .replace("{X}", &f.name)
    .replace("{c}", &w.drug_classes[f.class].name)
    .replace("{c1}", &singular(&w.drug_classes[f.class].name))
    .replace("{a}", article(&w.drug_classes[f.class].name));
    let second = pick(
        &mut ctx.rng,
        &[
            "If {X} is not tolerated or fails, switch to {Y}.",
            "{Y} is the second-line option.",
            "Second line: {Y} ({c}).",
        ],
    )
    .replace("{X}", &f.name)
    .replace("{Y}", &s.name)
    .replace("{c}", &w.drug_classes[s.class].name);
    let dose = format!("Usual dose of {}: {}-{} mg {}.", f.name, f.dose_min_mg, f.dose_max_mg, f.frequency);
    let text = format!("Guideline {section} ({}): {}\n{first} {second} {dose}", sys.specialty, d.name);
    Ok(Rendered::medical(text, &sys.name))
}

fn treatment_qa(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let (f, s) = (&w.drugs[d.first_line], &w.drugs[d.second_line]);
    let q1 = pick(
        &mut ctx.rng,
        &[
            "What is the first-line treatment for {D}?",
            "Which drug is given first for {D}?",
            "How is {D} treated first?",
        ],
    )
    .replace("{D}", &d.name);
    let a1 =
        pick(&mut ctx.rng, &["{X} is the first-line treatment for {D}.", "{X}.", "Treatment of {D} starts with {X}."])
            .replace("{D}", &d.name)
            .replace("{X}", &f.name);
    let text = format!(
        "Q: {q1}\nA: {a1}\n\nQ: And if that does not work?\nA: The second-line drug for {} is {}.",
        d.name, s.name
    );
    Ok(Rendered::medical(text, &w.organ_systems[d.system].name))
}

fn management(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let (f, s) = (&w.drugs[d.first_line], &w.drugs[d.second_line]);
    let fc = &w.drug_classes[f.class];
    let text = format!(
        "Management of {D}\n\nTreatment of {D} begins with {X}, {a} {c} that {m}. {X} is taken {fr} by the {r} route. \
         When {X} cannot be used, {Y} is the second-line drug. Patients are followed up in {sp}.",
        D = d.name,
        X = f.name,
        a = article(&fc.name),
        c = singular(&fc.name),
        m = fc.mechanism,
        fr = f.frequency,
        r = f.route,
        Y = s.name,
        sp = sys.specialty,
    );
    Ok(Rendered::medical(text, &sys.name))
}

fn discharge(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let f = &w.drugs[d.first_line];
    let days = ctx.rng.gen_range(2..15);
    let dose = ctx.rng.gen_range(f.dose_min_mg..=f.dose_max_mg);
    let text = format!(
        "Discharge summary\nDiagnosis: {}\nLength of stay: {days} days\nMedications on discharge: {} {dose} mg {} ({})\n\
         Follow-up: {} clinic in {} weeks.",
        d.name,
        f.name,
        f.frequency,
        f.route,
        w.organ_systems[d.system].specialty,
        ctx.rng.gen_range(2..9)
    );
    Ok(Rendered::medical(text, &w.organ_systems[d.system].name))
}

fn abstract_(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let (f, s) = (&w.drugs[d.first_line], &w.drugs[d.second_line]);
    let n = ctx.rng.gen_range(40..900);
    let better = ctx.rng.gen_range(12..40);
    let text = format!(
        "Abstract\nBackground: {D} is {a} {c} {sys} disease. Methods: {n} patients with {D} were randomised to {X} or {Y}. \
         Results: remission was {better}% more frequent with {X}. Conclusion: {X} remains the first-line treatment of {D}, \
         with {Y} as the second-line alternative.",
        D = d.name,
        a = article(&d.course),
        c = d.course,
        sys = w.organ_systems[d.system].name,
        X = f.name,
        Y = s.name,
    );
    Ok(Rendered::medical(text, &w.organ_systems[d.system].name))
}

fn pharmacist(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let f = &w.drugs[d.first_line];
    let mut text = format!("Pharmacist's note: patients with {} are started on {}. ", d.name, f.name);
    if let Some(x) = f.interactions.first() {
        text += &format!("Note that {} {} {}. ", f.name, x.effect, w.drugs[x.drug].name);
    }
    let contra: Vec<String> = f.contraindications.iter().map(|c| w.contraindication_text(c)).collect();
    text += &format!("Do not dispense {} in {}.", f.name, list_and(&contra));
    Ok(Rendered::medical(text, &w.organ_systems[d.system].name))
}

fn formulary(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let mut rows = vec![i];
    let n = w.diseases.len();
    let mut k = ctx.rng.gen_range(1..n.max(2));
    while rows.len() < 4.min(n) {
        let j = (i + k) % n;
        if w.diseases[j].system == d.system && !rows.contains(&j) {
            rows.push(j);
        }
        k += 1;
        if k > 2 * n {
            break;
        }
    }
    let mut text = format!(
        "Formulary, {} section\n| Disease | First-line | Second-line |\n|---|---|---|\n",
        w.organ_systems[d.system].name
    );
    for r in rows {
        let x = &w.diseases[r];
        text += &format!("| {} | {} | {} |\n", x.name, w.drugs[x.first_line].name, w.drugs[x.second_line].name);
    }
    Ok(Rendered::medical(text.trim_end().to_string(), &w.organ_systems[d.system].name))
}
