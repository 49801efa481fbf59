//! Fixed word lists the generator draws from (real words; the facts built from them are invented).

/// (adjective, specialty, organ, effect of treatment).
pub const ORGAN_SYSTEMS: &[(&str, &str, &str, &str)] = &[
    ("cardiovascular", "cardiology", "heart", "lowers vascular tone"),
    ("respiratory", "pulmonology", "lungs", "relaxes the airways"),
    ("renal", "nephrology", "kidneys", "protects the filtering units of the kidney"),
    ("hepatic", "hepatology", "liver", "reduces inflammation in the liver"),
    ("gastrointestinal", "gastroenterology", "bowel", "calms the lining of the gut"),
    ("neurological", "neurology", "brain", "stabilises nerve signalling"),
    ("dermatological", "dermatology", "skin", "slows the turnover of skin cells"),
    ("hematological", "hematology", "blood", "restores normal blood cell production"),
    ("endocrine", "endocrinology", "glands", "rebalances hormone output"),
    ("musculoskeletal", "rheumatology", "joints", "reduces swelling in the joints"),
    ("immune", "immunology", "immune system", "dampens the immune response"),
    ("ocular", "ophthalmology", "eyes", "lowers pressure inside the eye"),
];

/// Base symptoms, combined with [`SYMPTOM_QUALIFIERS`].
pub const SYMPTOM_BASES: &[&str] = &[
    "fever",
    "cough",
    "chest pain",
    "headache",
    "fatigue",
    "rash",
    "joint pain",
    "abdominal pain",
    "nausea",
    "vomiting",
    "diarrhea",
    "constipation",
    "dizziness",
    "blurred vision",
    "shortness of breath",
    "palpitations",
    "night sweats",
    "weight loss",
    "muscle weakness",
    "tremor",
    "itching",
    "jaundice",
    "ankle swelling",
    "hoarseness",
    "back pain",
    "confusion",
    "numbness",
    "dry mouth",
    "excessive thirst",
    "frequent urination",
    "pale skin",
    "easy bruising",
    "hair loss",
    "wheezing",
    "sore throat",
    "ear pain",
    "eye redness",
    "loss of appetite",
    "chills",
    "flank pain",
    "bone pain",
    "muscle cramps",
    "insomnia",
    "hiccups",
    "nosebleeds",
    "facial flushing",
];

/// Qualifiers for symptoms.
pub const SYMPTOM_QUALIFIERS: &[&str] =
    &["intermittent", "persistent", "nocturnal", "sudden", "mild", "severe", "recurrent", "painless", "morning"];

/// Lab test name prefixes.
pub const LAB_PREFIXES: &[&str] = &["serum", "plasma", "urinary", "blood", "salivary"];
/// Lab test name endings.
pub const LAB_ENDINGS: &[&str] = &["in", "ase", "ol", "ide", "amine", "ulin"];
/// Lab units.
pub const LAB_UNITS: &[&str] = &["mg/dL", "U/L", "mmol/L", "ng/mL", "g/L"];

/// (genus ending, kind) for pathogens.
pub const PATHOGEN_GENERA: &[(&str, &str)] = &[
    ("monas", "bacterium"),
    ("bacter", "bacterium"),
    ("coccus", "bacterium"),
    ("virus", "virus"),
    ("myces", "fungus"),
    ("plasma", "parasite"),
];
/// Species endings.
pub const PATHOGEN_SPECIES: &[&str] = &["is", "ae", "um", "ensis", "ii"];

/// (target kind, possible actions as (class noun, mechanism verb phrase with `{t}` for the target)).
pub const TARGET_KINDS: &[(&str, &[(&str, &str)])] = &[
    ("ase", &[("inhibitor", "inhibits {t}")]),
    ("receptor", &[("agonist", "activates the {t}"), ("antagonist", "blocks the {t}")]),
    ("channel", &[("blocker", "blocks the {t}"), ("opener", "opens the {t}")]),
    ("transporter", &[("inhibitor", "inhibits the {t}")]),
];

/// Disease name patterns (`{S}` capitalised stem, `{s}` lowercase stem).
pub const DISEASE_PATTERNS: &[&str] =
    &["{S} disease", "{S} syndrome", "{s}osis", "{s}itis", "{s}emia", "{S} palsy", "{S} fever", "{s}opathy"];

/// Disease course.
pub const COURSES: &[&str] = &["acute", "chronic"];
/// Affected populations.
pub const POPULATIONS: &[&str] = &["children", "young adults", "older adults", "pregnant women", "adults of any age"];

/// Dose minima (mg).
pub const DOSES_MG: &[u32] = &[5, 10, 20, 25, 40, 50, 100, 200, 250, 500];
/// Dose range multipliers.
pub const DOSE_SPANS: &[u32] = &[2, 4, 5, 10];
/// Dosing frequencies.
pub const FREQUENCIES: &[&str] =
    &["once daily", "twice daily", "three times daily", "every eight hours", "once weekly"];
/// Routes of administration.
pub const ROUTES: &[&str] = &["oral", "intravenous", "subcutaneous", "inhaled", "topical"];

/// General contraindications.
pub const CONDITIONS: &[&str] = &[
    "pregnancy",
    "severe renal impairment",
    "severe hepatic impairment",
    "a history of angioedema",
    "bradycardia",
    "uncontrolled bleeding",
    "breastfeeding",
    "severe dehydration",
];

/// Interaction effects (verb phrases taking the other drug).
pub const INTERACTION_EFFECTS: &[&str] = &[
    "raises the blood level of",
    "weakens the effect of",
    "increases the bleeding risk of",
    "increases the sedation caused by",
    "lowers the absorption of",
    "increases the kidney toxicity of",
];
