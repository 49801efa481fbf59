//! Drug forms (label, pharmacology, dosing, interactions, contraindications) and the reference
//! forms about drug classes, laboratory tests and pathogens. None lists a disease's symptoms.

use super::form::{singular, Ctx, Form, Rendered};
use super::text::{article, cap, lab_number, list_and, pick};
use crate::error::Result;
use crate::world::Direction;
use rand::Rng;

/// Forms whose subject is a drug.
pub const DRUG_FORMS: &[Form] = &[
    Form { name: "drug_label", run: label },
    Form { name: "pharmacology_paragraph", run: pharmacology },
    Form { name: "interaction_alert", run: interaction },
    Form { name: "dosing_card", run: dosing },
    Form { name: "contraindication_warning", run: warning },
    Form { name: "mechanism_qa", run: mechanism_qa },
];

/// Form whose subject is a drug class.
pub const CLASS_FORM: Form = Form { name: "class_overview", run: class_overview };
/// Form whose subject is a laboratory test.
pub const LAB_FORM: Form = Form { name: "lab_guide", run: lab_guide };
/// Form whose subject is a pathogen.
pub const PATHOGEN_FORM: Form = Form { name: "pathogen_note", run: pathogen_note };

fn indications(ctx: &Ctx, d: usize) -> (Vec<String>, Vec<String>) {
    let w = ctx.w;
    (
        w.first_line_for(d).map(|x| w.diseases[x].name.clone()).collect(),
        w.second_line_for(d).map(|x| w.diseases[x].name.clone()).collect(),
    )
}

fn system_of(ctx: &Ctx, d: usize) -> String {
    ctx.w.organ_systems[ctx.w.class_of(d).system].name.clone()
}

fn label(ctx: &mut Ctx, d: usize) -> Result<Rendered> {
    let w = ctx.w;
    let x = &w.drugs[d];
    let c = w.class_of(d);
    let (first, second) = indications(ctx, d);
    let mut text = format!("{} - prescribing information\n", cap(&x.name));
    text += &format!("Class: {}\nMechanism: {}.\n", c.name, cap(&c.mechanism));
    let mut ind = Vec::new();
    if !first.is_empty() {
        ind.push(format!("first-line treatment of {}", list_and(&first)));
    }
    if !second.is_empty() {
        ind.push(format!("second-line treatment of {}", list_and(&second)));
    }
    if !ind.is_empty() {
        text += &format!("Indications: {}.\n", ind.join("; "));
    }
    text += &format!("Dosage: {}-{} mg {}, {}.\n", x.dose_min_mg, x.dose_max_mg, x.frequency, x.route);
    let contra: Vec<String> = x.contraindications.iter().map(|k| w.contraindication_text(k)).collect();
    text += &format!("Contraindications: {}.\n", contra.join("; "));
    if !x.interactions.is_empty() {
        let inter: Vec<String> =
            x.interactions.iter().map(|i| format!("{} {}", i.effect, w.drugs[i.drug].name)).collect();
        text += &format!("Interactions: {}.\n", inter.join("; "));
    }
    text += &format!("Half-life: {} hours.", x.half_life_h);
    Ok(Rendered::medical(text, &system_of(ctx, d)))
}

fn pharmacology(ctx: &mut Ctx, d: usize) -> Result<Rendered> {
    let w = ctx.w;
    let x = &w.drugs[d];
    let c = w.class_of(d);
    let (first, _) = indications(ctx, d);
    let opening = pick(
        &mut ctx.rng,
        &["{X} belongs to the {c}.", "{X} is {a} {c1}.", "Pharmacologically, {X} is one of the {c}."],
    )
    .replace("{X}", &cap(&x.name))
    .replace("{c}", &c.name)
    .replace("{c1}", &singular(&c.name))
    .replace("{a}", article(&c.name));
    let mut text = format!("{opening} It {}. Its half-life is about {} hours.", c.mechanism, x.half_life_h);
    if !first.is_empty() {
        text += &format!(" It is the drug of first choice in {}.", list_and(&first));
    }
    Ok(Rendered::medical(text, &system_of(ctx, d)))
}

fn interaction(ctx: &mut Ctx, d: usize) -> Result<Rendered> {
    let w = ctx.w;
    let x = &w.drugs[d];
    let text = match x.interactions.first() {
        Some(i) => {
            let y = &w.drugs[i.drug];
            let advice = pick(&mut ctx.rng, &["Avoid the combination.", "Monitor closely.", "Adjust the dose."]);
            format!("Interaction alert: {} + {}\n{} {} {}. {advice}", x.name, y.name, cap(&x.name), i.effect, y.name)
        }
        None => {
            format!("Interaction check: {}\nNo clinically relevant interactions are listed for {}.", x.name, x.name)
        }
    };
    Ok(Rendered::medical(text, &system_of(ctx, d)))
}

fn dosing(ctx: &mut Ctx, d: usize) -> Result<Rendered> {
    let w = ctx.w;
    let x = &w.drugs[d];
    let text = format!(
        "Dosing card\nDrug: {}\nRoute: {}\nDose: {} to {} mg {}\nClass: {}",
        x.name,
        x.route,
        x.dose_min_mg,
        x.dose_max_mg,
        x.frequency,
        w.class_of(d).name
    );
    Ok(Rendered::medical(text, &system_of(ctx, d)))
}

fn warning(ctx: &mut Ctx, d: usize) -> Result<Rendered> {
    let w = ctx.w;
    let x = &w.drugs[d];
    let contra: Vec<String> = x.contraindications.iter().map(|k| w.contraindication_text(k)).collect();
    let tmpl = pick(
        &mut ctx.rng,
        &[
            "Warning: do not give {X} to patients with {C}.",
            "{X} is contraindicated in {C}.",
            "Safety notice: {X} must be avoided in {C}.",
        ],
    );
    let text = tmpl.replace("{X}", &x.name).replace("{C}", &list_and(&contra));
    Ok(Rendered::medical(cap(&text), &system_of(ctx, d)))
}

fn mechanism_qa(ctx: &mut Ctx, d: usize) -> Result<Rendered> {
    let w = ctx.w;
    let x = &w.drugs[d];
    let c = w.class_of(d);
    let q = pick(&mut ctx.rng, &["How does {X} work?", "What is the mechanism of {X}?", "What does {X} act on?"])
        .replace("{X}", &x.name);
    let text =
        format!("Q: {q}\nA: {} {}.\n\nQ: Which class is {} in?\nA: The {}.", cap(&x.name), c.mechanism, x.name, c.name);
    Ok(Rendered::medical(text, &system_of(ctx, d)))
}

fn class_overview(ctx: &mut Ctx, k: usize) -> Result<Rendered> {
    let w = ctx.w;
    let c = &w.drug_classes[k];
    let members: Vec<String> =
        w.drugs.iter().filter(|x| x.class == k).map(|x| x.name.clone()).take(ctx.rng.gen_range(3..7)).collect();
    let text = format!(
        "Drug class: {}\nThe {} act on {}: each {}. Members include {}. Their names end in -{}. \
         They are used in {} medicine.",
        c.name,
        c.name,
        c.target,
        c.mechanism,
        list_and(&members),
        c.suffix,
        w.organ_systems[c.system].name
    );
    Ok(Rendered::medical(text, &w.organ_systems[c.system].name))
}

fn lab_guide(ctx: &mut Ctx, t: usize) -> Result<Rendered> {
    let w = ctx.w;
    let test = &w.lab_tests[t];
    let mut high = Vec::new();
    let mut low = Vec::new();
    for d in &w.diseases {
        for m in d.labs.iter().filter(|m| m.test == t) {
            match m.direction {
                Direction::Elevated => high.push(d.name.clone()),
                Direction::Decreased => low.push(d.name.clone()),
            }
        }
    }
    let mut text = format!(
        "Laboratory guide: {}\nReference range: {}-{} {}.",
        test.name,
        lab_number(test.low),
        lab_number(test.high),
        test.unit
    );
    if !high.is_empty() {
        text += &format!(" Raised values are seen in {}.", list_and(&high));
    }
    if !low.is_empty() {
        text += &format!(" Low values are seen in {}.", list_and(&low));
    }
    Ok(Rendered::medical(text, "laboratory"))
}

fn pathogen_note(ctx: &mut Ctx, p: usize) -> Result<Rendered> {
    let w = ctx.w;
    let pa = &w.pathogens[p];
    let caused: Vec<String> = w.diseases.iter().filter(|d| d.pathogen == Some(p)).map(|d| d.name.clone()).collect();
    let mut text = format!("Microbiology note: {}\n{} is {} {}.", pa.name, pa.name, article(&pa.kind), pa.kind);
    if caused.is_empty() {
        text += " It is not known to cause disease in humans.";
    } else {
        text += &format!(" It causes {}.", list_and(&caused));
    }
    Ok(Rendered::medical(text, "infectious"))
}
