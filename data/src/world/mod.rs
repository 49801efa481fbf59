//! The synthetic medical world: invented entities with typed relations, generated from a seed.
//!
//! The world is the ground truth that the corpus renders as text and the evaluation sets ask
//! about. It depends only on the seed and [`WorldConfig`] (never on the corpus size), so a bigger
//! corpus of the same seed describes the same world.

mod generate;
pub mod names;
mod vocab;

use serde::{Deserialize, Serialize};

pub use generate::generate;

/// How many entities of each kind to invent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    /// Diseases (>= 12; default 300).
    pub diseases: usize,
    /// Drugs (at least 2 per drug class; default 400).
    pub drugs: usize,
    /// Symptoms (default 180).
    pub symptoms: usize,
    /// Laboratory tests (default 90).
    pub lab_tests: usize,
    /// Pathogens (default 60).
    pub pathogens: usize,
    /// Drug classes (>= 24, two per organ system; default 48).
    pub drug_classes: usize,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig { diseases: 300, drugs: 400, symptoms: 180, lab_tests: 90, pathogens: 60, drug_classes: 48 }
    }
}

/// A body system; diseases and drug classes belong to one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrganSystem {
    /// Adjective, e.g. `cardiovascular`.
    pub name: String,
    /// The medical specialty, e.g. `cardiology`.
    pub specialty: String,
    /// The organ in plain words, e.g. `heart`.
    pub organ: String,
}

/// A presenting symptom or clinical sign.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Symptom {
    /// E.g. `nocturnal cough` or `Velran's sign`.
    pub name: String,
}

/// A laboratory test with a reference range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabTest {
    /// E.g. `serum kolarin`.
    pub name: String,
    /// Unit of the result.
    pub unit: String,
    /// Lower end of the reference range.
    pub low: f32,
    /// Upper end of the reference range.
    pub high: f32,
}

/// A pathogen that causes some infectious diseases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pathogen {
    /// Binomial name, e.g. `Brevimonas kaltris`.
    pub name: String,
    /// `bacterium`, `virus`, `fungus` or `parasite`.
    pub kind: String,
}

/// A pharmacological class: one target, one action, one naming suffix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrugClass {
    /// Plural class name, e.g. `kolase inhibitors`.
    pub name: String,
    /// Molecular target, e.g. `kolase` or `the vrenth channel`.
    pub target: String,
    /// Mechanism in one clause, e.g. `inhibits kolase, which lowers vascular tone`.
    pub mechanism: String,
    /// Suffix shared by the class's drug names, e.g. `avrel`.
    pub suffix: String,
    /// Index into [`World::organ_systems`].
    pub system: usize,
}

/// Something a drug must not be given with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Contraindication {
    /// A disease of this world (index into [`World::diseases`]).
    Disease(usize),
    /// A general condition, e.g. `pregnancy`.
    Condition(String),
}

/// A drug-drug interaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    /// Index into [`World::drugs`].
    pub drug: usize,
    /// What happens, as a verb phrase taking the other drug: `raises the blood level of`.
    pub effect: String,
}

/// A drug.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drug {
    /// Generic name, e.g. `trelavrel`.
    pub name: String,
    /// Index into [`World::drug_classes`].
    pub class: usize,
    /// Lowest usual dose in mg.
    pub dose_min_mg: u32,
    /// Highest usual dose in mg.
    pub dose_max_mg: u32,
    /// E.g. `twice daily`.
    pub frequency: String,
    /// E.g. `oral`.
    pub route: String,
    /// Elimination half-life in hours.
    pub half_life_h: u32,
    /// What it must not be given with.
    pub contraindications: Vec<Contraindication>,
    /// Interactions (symmetric: the other drug lists this one too).
    pub interactions: Vec<Interaction>,
}

/// Direction of a laboratory abnormality.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Above the reference range.
    Elevated,
    /// Below the reference range.
    Decreased,
}

impl Direction {
    /// `elevated` / `decreased`.
    pub fn word(self) -> &'static str {
        match self {
            Direction::Elevated => "elevated",
            Direction::Decreased => "decreased",
        }
    }
}

/// A laboratory marker of a disease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabMarker {
    /// Index into [`World::lab_tests`].
    pub test: usize,
    /// Which way the result goes.
    pub direction: Direction,
}

/// A disease with its presentation and treatment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Disease {
    /// E.g. `Morvane syndrome`.
    pub name: String,
    /// Index into [`World::organ_systems`].
    pub system: usize,
    /// Indices into [`World::symptoms`] (3 to 5; no disease's set contains another's).
    pub symptoms: Vec<usize>,
    /// One or two laboratory markers.
    pub labs: Vec<LabMarker>,
    /// Causative pathogen, if infectious (index into [`World::pathogens`]).
    pub pathogen: Option<usize>,
    /// `acute` or `chronic`.
    pub course: String,
    /// Who it mostly affects, e.g. `older adults`.
    pub population: String,
    /// First-line drug (index into [`World::drugs`]); unique to this disease.
    pub first_line: usize,
    /// Second-line drug, another class of the same system.
    pub second_line: usize,
}

/// The whole world.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct World {
    /// The seed it was generated from.
    pub seed: u64,
    /// The sizes it was generated with.
    pub config: WorldConfig,
    /// Body systems.
    pub organ_systems: Vec<OrganSystem>,
    /// Symptoms.
    pub symptoms: Vec<Symptom>,
    /// Laboratory tests.
    pub lab_tests: Vec<LabTest>,
    /// Pathogens.
    pub pathogens: Vec<Pathogen>,
    /// Drug classes.
    pub drug_classes: Vec<DrugClass>,
    /// Drugs.
    pub drugs: Vec<Drug>,
    /// Diseases.
    pub diseases: Vec<Disease>,
}

impl World {
    /// The class of drug `d`.
    pub fn class_of(&self, d: usize) -> &DrugClass {
        &self.drug_classes[self.drugs[d].class]
    }

    /// The diseases for which drug `d` is first-line.
    pub fn first_line_for(&self, d: usize) -> impl Iterator<Item = usize> + '_ {
        self.diseases.iter().enumerate().filter(move |(_, x)| x.first_line == d).map(|(i, _)| i)
    }

    /// The diseases for which drug `d` is second-line.
    pub fn second_line_for(&self, d: usize) -> impl Iterator<Item = usize> + '_ {
        self.diseases.iter().enumerate().filter(move |(_, x)| x.second_line == d).map(|(i, _)| i)
    }

    /// A contraindication in words.
    pub fn contraindication_text(&self, c: &Contraindication) -> String {
        match c {
            Contraindication::Disease(i) => self.diseases[*i].name.clone(),
            Contraindication::Condition(s) => s.clone(),
        }
    }
}
