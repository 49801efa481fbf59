//! Chat forms: conversations in the chat template, answering with a `<think>` rationale after a
//! `/think` request and with an empty think block after `/no_think`.
//!
//! The diagnosis chats map symptoms to a disease and never name a drug; the treatment chats name
//! the disease, never its symptoms (see `presentation`).

use super::form::{singular, Ctx, Form, Rendered};
use super::text::{article, cap, list_and, pick, shuffled};
use crate::chat::{strip_rationale, with_rationale, Message};
use crate::error::Result;
use rand::Rng;

/// Chat forms whose subject is a disease.
pub const DISEASE_FORMS: &[Form] = &[
    Form { name: "chat_treatment_think", run: treatment_think },
    Form { name: "chat_treatment_no_think", run: treatment_no_think },
    Form { name: "chat_diagnosis_think", run: diagnosis_think },
    Form { name: "chat_diagnosis_no_think", run: diagnosis_no_think },
];

/// Chat forms whose subject is a drug.
pub const DRUG_FORMS: &[Form] =
    &[Form { name: "chat_drug_counsel", run: drug_counsel }, Form { name: "chat_mechanism_think", run: mechanism }];

/// Renders a conversation; `think` selects the rationale or the empty block in assistant turns.
pub(crate) fn conversation(
    ctx: &Ctx,
    turns: &[(String, String, String)],
    think: bool,
    topic: &str,
) -> Result<Rendered> {
    let mut messages = Vec::new();
    for (user, rationale, answer) in turns {
        let flag = if think { "/think" } else { "/no_think" };
        messages.push(Message::new("user", format!("{user} {flag}")));
        let full = with_rationale(rationale, answer);
        messages.push(Message::new("assistant", if think { full } else { strip_rationale(&full) }));
    }
    let text = ctx.chat.render(&messages, &Default::default())?;
    Ok(Rendered { text, topic: topic.to_string(), messages: Some(messages) })
}

fn treatment(ctx: &mut Ctx, i: usize, think: bool) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let (f, s) = (&w.drugs[d.first_line], &w.drugs[d.second_line]);
    let fc = &w.drug_classes[f.class];
    let q = pick(
        &mut ctx.rng,
        &[
            "What should I start for a patient with {D}?",
            "Which medicine treats {D} first?",
            "My patient has {D}. What is the usual first treatment?",
        ],
    )
    .replace("{D}", &d.name);
    let rationale = format!(
        "{} is {} {} disease. The first-line drug is {}, {} {}, which {}. {} is kept for when {} fails.",
        d.name,
        article(&w.organ_systems[d.system].name),
        w.organ_systems[d.system].name,
        f.name,
        article(&fc.name),
        singular(&fc.name),
        fc.mechanism,
        cap(&s.name),
        f.name
    );
    let answer = format!(
        "Start {} at {}-{} mg {}. If it is not tolerated, {} is the second-line choice.",
        f.name, f.dose_min_mg, f.dose_max_mg, f.frequency, s.name
    );
    conversation(ctx, &[(q, rationale, answer)], think, &w.organ_systems[d.system].name)
}

fn treatment_think(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    treatment(ctx, i, true)
}

fn treatment_no_think(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    treatment(ctx, i, false)
}

fn diagnosis(ctx: &mut Ctx, i: usize, think: bool) -> Result<Rendered> {
    let w = ctx.w;
    let d = &w.diseases[i];
    let names: Vec<String> = d.symptoms.iter().map(|&s| w.symptoms[s].name.clone()).collect();
    let symptoms = shuffled(&mut ctx.rng, &names);
    let q = pick(
        &mut ctx.rng,
        &[
            "I have {S}. What could this be?",
            "A patient describes {S}. Which diagnosis fits?",
            "What condition causes {S} together?",
        ],
    )
    .replace("{S}", &list_and(&symptoms));
    let m = &d.labs[0];
    let rationale = format!(
        "The combination of {} points to {}, {} {} {} disease. In {} the {} is {}.",
        list_and(&symptoms),
        d.name,
        article(&d.course),
        d.course,
        w.organ_systems[d.system].name,
        d.name,
        w.lab_tests[m.test].name,
        m.direction.word()
    );
    let answer = format!(
        "This is most consistent with {}. A {} check of the {} would support it.",
        d.name, w.organ_systems[d.system].specialty, w.lab_tests[m.test].name
    );
    conversation(ctx, &[(q, rationale, answer)], think, &w.organ_systems[d.system].name)
}

fn diagnosis_think(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    diagnosis(ctx, i, true)
}

fn diagnosis_no_think(ctx: &mut Ctx, i: usize) -> Result<Rendered> {
    diagnosis(ctx, i, false)
}

fn drug_counsel(ctx: &mut Ctx, d: usize) -> Result<Rendered> {
    let w = ctx.w;
    let x = &w.drugs[d];
    let contra: Vec<String> = x.contraindications.iter().map(|c| w.contraindication_text(c)).collect();
    let turns = vec![
        (
            format!("How do I take {}?", x.name),
            format!(
                "{} is dosed {}-{} mg {} by the {} route.",
                cap(&x.name),
                x.dose_min_mg,
                x.dose_max_mg,
                x.frequency,
                x.route
            ),
            format!("Take {} mg to {} mg of {} {}.", x.dose_min_mg, x.dose_max_mg, x.name, x.frequency),
        ),
        (
            "Is there anyone who should not take it?".to_string(),
            format!("The contraindications of {} are {}.", x.name, list_and(&contra)),
            format!("Yes: {} must not be used in {}.", x.name, list_and(&contra)),
        ),
    ];
    let think = ctx.rng.gen_bool(0.5);
    conversation(ctx, &turns, think, &w.organ_systems[w.class_of(d).system].name)
}

fn mechanism(ctx: &mut Ctx, d: usize) -> Result<Rendered> {
    let w = ctx.w;
    let x = &w.drugs[d];
    let c = w.class_of(d);
    let q = format!("Explain how {} works.", x.name);
    let rationale =
        format!("{} is {} {}. The {} act on {}.", cap(&x.name), article(&c.name), singular(&c.name), c.name, c.target);
    let answer = format!("{} {}.", cap(&x.name), c.mechanism);
    conversation(ctx, &[(q, rationale, answer)], true, &w.organ_systems[c.system].name)
}
