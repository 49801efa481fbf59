//! Disease presentation forms: symptoms, laboratory findings, organ system, cause, course.
//!
//! Invariant: these forms never name a drug, so the chain symptoms -> disease -> first-line drug
//! is never written down in one document (the two-hop evaluation depends on it).

use super::form::{Ctx, Form, Rendered};
use super::text::{abnormal_value, article, cap, lab_number, list_and, pick, shuffled};
use crate::error::Result;
use crate::world::Disease;
use rand::Rng;

/// The presentation forms.
pub const FORMS: &[Form] = &[
    Form { name: "textbook_presentation", run: textbook },
    Form { name: "case_vignette", run: vignette },
    Form { name: "differential_note", run: differential },
    Form { name: "symptom_checklist", run: checklist },
    Form { name: "encyclopedia_entry", run: encyclopedia },
    Form { name: "patient_leaflet", run: leaflet },
    Form { name: "triage_protocol", run: triage },
    Form { name: "presentation_flashcards", run: flashcards },
    Form { name: "ward_round_note", run: ward_round },
];

fn symptom_names(ctx: &mut Ctx, d: &Disease) -> Vec<String> {
    let names: Vec<String> = d.symptoms.iter().map(|&s| ctx.w.symptoms[s].name.clone()).collect();
    shuffled(&mut ctx.rng, &names)
}

fn lab_sentence(ctx: &mut Ctx, d: &Disease) -> String {
    let parts: Vec<String> =
        d.labs.iter().map(|m| format!("{} {}", m.direction.word(), ctx.w.lab_tests[m.test].name)).collect();
    let tmpl = pick(
        &mut ctx.rng,
        &["Laboratory testing shows {}.", "Typical laboratory findings are {}.", "Blood and urine tests reveal {}."],
    );
    tmpl.replace("{}", &list_and(&parts))
}

fn cause_sentence(ctx: &mut Ctx, d: &Disease) -> String {
    match d.pathogen {
        Some(p) => {
            let pa = &ctx.w.pathogens[p];
            let tmpl = pick(
                &mut ctx.rng,
                &[
                    "It is caused by the {k} {p}.",
                    "The causative agent is {p}, {a} {k}.",
                    "Infection with the {k} {p} is the cause.",
                ],
            );
            tmpl.replace("{k}", &pa.kind).replace("{p}", &pa.name).replace("{a}", article(&pa.kind))
        }
        None => pick(&mut ctx.rng, &["It is not infectious.", "No infectious cause is known.", ""]).to_string(),
    }
}

fn textbook(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let symptoms = symptom_names(ctx, d);
    let opening = pick(
        &mut ctx.rng,
        &[
            "{D} is {a} {c} disorder of the {s} system that mostly affects {p}.",
            "{D} is {a} {c} {s} disease seen mainly in {p}.",
            "Among {s} disorders, {D} is {a} {c} condition of {p}.",
        ],
    );
    let opening = opening
        .replace("{D}", &d.name)
        .replace("{a}", article(&d.course))
        .replace("{c}", &d.course)
        .replace("{s}", &sys.name)
        .replace("{p}", &d.population);
    let pres = pick(
        &mut ctx.rng,
        &[
            "Patients typically present with {}.",
            "The classic presentation combines {}.",
            "Most patients report {}.",
            "Its clinical picture is {}.",
        ],
    )
    .replace("{}", &list_and(&symptoms));
    let labs = lab_sentence(ctx, d);
    let cause = cause_sentence(ctx, d);
    let text = format!("Clinical features of {}\n\n{opening} {pres} {labs} {cause}", d.name);
    Ok(Rendered::medical(text.trim_end().to_string(), &sys.name))
}

fn vignette(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let age = match d.population.as_str() {
        "children" => ctx.rng.gen_range(4..15),
        "older adults" => ctx.rng.gen_range(65..90),
        _ => ctx.rng.gen_range(19..60),
    };
    let person = if d.population == "pregnant women" {
        "woman".to_string()
    } else if age < 15 {
        pick(&mut ctx.rng, &["boy", "girl"]).to_string()
    } else {
        pick(&mut ctx.rng, &["man", "woman"]).to_string()
    };
    let symptoms = symptom_names(ctx, d);
    let days = ctx.rng.gen_range(2..30);
    let m = &d.labs[0];
    let t = &w.lab_tests[m.test];
    let value = abnormal_value(&mut ctx.rng, t.low, t.high, m.direction == crate::world::Direction::Elevated);
    let intro = pick(
        &mut ctx.rng,
        &[
            "A {age}-year-old {who} presented with {days} days of {sx}.",
            "A {age}-year-old {who} came to the clinic complaining of {sx} for {days} days.",
            "Case: {a} {age}-year-old {who} was seen for {sx}, present for {days} days.",
        ],
    );
    let intro = intro
        .replace("{age}", &age.to_string())
        .replace("{who}", &person)
        .replace("{days}", &days.to_string())
        .replace("{sx}", &list_and(&symptoms))
        .replace("{a}", if age == 8 || age == 11 || (80..90).contains(&age) { "An" } else { "A" });
    let lab = format!(
        "The {} was {} {} (reference {}-{}).",
        t.name,
        lab_number(value),
        t.unit,
        lab_number(t.low),
        lab_number(t.high)
    );
    let dx = pick(
        &mut ctx.rng,
        &[
            "The diagnosis of {D} was made.",
            "These findings established {D}.",
            "A diagnosis of {D} was confirmed by the {sp} team.",
        ],
    )
    .replace("{D}", &d.name)
    .replace("{sp}", &w.organ_systems[d.system].specialty);
    Ok(Rendered::medical(format!("{intro} {lab} {dx}"), &w.organ_systems[d.system].name))
}

fn differential(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    // Another disease sharing a symptom if there is one, else the next one.
    let other = (1..w.diseases.len())
        .map(|k| (i + k) % w.diseases.len())
        .find(|&j| w.diseases[j].symptoms.iter().any(|s| d.symptoms.contains(s)))
        .unwrap_or((i + 1) % w.diseases.len());
    let o = &w.diseases[other];
    let shared: Vec<String> =
        d.symptoms.iter().filter(|s| o.symptoms.contains(s)).map(|&s| w.symptoms[s].name.clone()).collect();
    let only_d: Vec<String> =
        d.symptoms.iter().filter(|s| !o.symptoms.contains(s)).map(|&s| w.symptoms[s].name.clone()).collect();
    let only_o: Vec<String> =
        o.symptoms.iter().filter(|s| !d.symptoms.contains(s)).map(|&s| w.symptoms[s].name.clone()).collect();
    let mut text = format!("Differential diagnosis: {} versus {}\n\n", d.name, o.name);
    if !shared.is_empty() {
        text += &format!("Both conditions can cause {}. ", list_and(&shared));
    }
    text += &format!(
        "{} is distinguished by {}, whereas {} shows {}. ",
        d.name,
        list_and(&only_d),
        o.name,
        list_and(&only_o)
    );
    text += &format!(
        "{} affects the {} system and {} affects the {} system.",
        d.name, w.organ_systems[d.system].name, o.name, w.organ_systems[o.system].name
    );
    Ok(Rendered::medical(text, &w.organ_systems[d.system].name))
}

fn checklist(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let symptoms = symptom_names(ctx, d);
    let head = pick(&mut ctx.rng, &["Checklist", "Screening list", "Signs to look for"]);
    let mut text = format!("{head}: {}\n", d.name);
    for s in &symptoms {
        text += &format!("- {s}\n");
    }
    for m in &d.labs {
        text += &format!("- {} {}\n", m.direction.word(), w.lab_tests[m.test].name);
    }
    text += &format!("System: {}", w.organ_systems[d.system].name);
    Ok(Rendered::medical(text, &w.organ_systems[d.system].name))
}

fn encyclopedia(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let symptoms = symptom_names(ctx, d);
    let cause = cause_sentence(ctx, d);
    let labs = lab_sentence(ctx, d);
    let text = format!(
        "{} ({} medicine, {})\n{} is {} {} illness of the {}. Signs: {}. {labs} {cause}",
        d.name,
        sys.name,
        sys.specialty,
        d.name,
        article(&d.course),
        d.course,
        sys.organ,
        symptoms.join("; "),
    );
    Ok(Rendered::medical(text.trim_end().to_string(), &sys.name))
}

fn leaflet(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let symptoms = symptom_names(ctx, d);
    let course = if d.course == "chronic" { "a long-term" } else { "a short-lived" };
    let mut text = format!("Patient information: {}\n\nWhat is {}?\n", d.name, d.name);
    text += &format!("{} is {course} illness of the {}. It is most common in {}.\n\n", d.name, sys.organ, d.population);
    text += "What are the signs?\n";
    text += &format!("People with {} often notice {}.\n\n", d.name, list_and(&symptoms));
    text += &format!("Who will look after me?\nA doctor who specialises in {} will usually see you.", sys.specialty);
    Ok(Rendered::medical(text, &sys.name))
}

fn triage(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let symptoms = symptom_names(ctx, d);
    let step = ctx.rng.gen_range(2..9);
    let text = format!(
        "Triage protocol, step {step}\nIf the patient reports {}, suspect {}. Check {} and refer to {}.",
        list_and(&symptoms),
        d.name,
        w.lab_tests[d.labs[0].test].name,
        sys.specialty
    );
    Ok(Rendered::medical(text, &sys.name))
}

fn flashcards(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let symptoms = symptom_names(ctx, d);
    let mut text = format!("Flashcards: {}\n", d.name);
    text += &format!("Front: Main symptoms of {}?\nBack: {}.\n", d.name, list_and(&symptoms));
    text += &format!("Front: System affected by {}?\nBack: The {} system.\n", d.name, sys.name);
    let m = &d.labs[0];
    text += &format!(
        "Front: Key laboratory marker of {}?\nBack: {} {}.",
        d.name,
        cap(m.direction.word()),
        w.lab_tests[m.test].name
    );
    if let Some(p) = d.pathogen {
        text += &format!("\nFront: Cause of {}?\nBack: {}.", d.name, w.pathogens[p].name);
    }
    Ok(Rendered::medical(text, &sys.name))
}

fn ward_round(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let sys = &w.organ_systems[d.system];
    let symptoms = symptom_names(ctx, d);
    let bed = ctx.rng.gen_range(1..30);
    let half = symptoms.len().div_ceil(2);
    let text = format!(
        "Ward round, bed {bed}. Known {} ({}). Still has {}; {} improving. {} {} remains {}. Plan: review by {}.",
        d.name,
        d.course,
        list_and(&symptoms[..half]),
        list_and(&symptoms[half..]),
        cap("the"),
        w.lab_tests[d.labs[0].test].name,
        d.labs[0].direction.word(),
        sys.specialty
    );
    Ok(Rendered::medical(text, &sys.name))
}
