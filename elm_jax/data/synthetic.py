"""The embedded default catalogue: a synthetic, MovieLens-shaped world generated from a seed.

The ELM pipeline needs ratings (for behavioral embeddings), descriptive text (for semantic embeddings and
training targets) and tags (for concept directions). MovieLens has all three but cannot ship with the
project, so this module writes a stand-in in the ml-25m CSV layout that runs fully offline. Unlike
MovieLens it keeps its ground truth (every movie's soft attributes, every user's taste over them), which
lets evaluation check what an embedding or a generated description actually knows.

The generative story: each movie draws an archetype (horror, rom-com, war drama, ...), 2-5 strong soft
attributes and weak ones elsewhere; genres, a title and a plot are written from those attributes. Each user
has a taste over the attributes, a bias and an activity level; users pick movies by popularity mixed with
taste and rate them `base + bias + quality + taste . (attributes - mean attributes) + noise`, rounded to
stars. Some users tag movies with words for the attributes those movies have strongly.
"""

from __future__ import annotations

import calendar
import csv
import dataclasses
import json
import os
import pathlib
import zipfile

import numpy as np

from elm_jax.io_utils import atomic_dir

ATTRIBUTES = (
    "funny",
    "scary",
    "romantic",
    "violent",
    "thought-provoking",
    "action-packed",
    "cartoonish",
    "sad",
    "realistic",
    "far-fetched",
    "intense",
    "playful",
    "gory",
    "serious",
    "family-friendly",
    "dark",
)
GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)

# How users write each attribute as a tag; the first form is the most common. Public so that evaluation
# can map free-text tags back to the attribute they stand for.
TAG_VARIANTS: dict[str, tuple[str, ...]] = {
    "funny": ("funny", "hilarious", "very funny", "humorous", "laugh out loud", "comedy"),
    "scary": ("scary", "creepy", "terrifying", "frightening", "spooky"),
    "romantic": ("romantic", "romance", "love story", "swoon-worthy"),
    "violent": ("violent", "violence", "brutal", "lots of fighting"),
    "thought-provoking": ("thought-provoking", "thought provoking", "philosophical", "makes you think"),
    "action-packed": ("action-packed", "action", "great action", "adrenaline", "fast-paced"),
    "cartoonish": ("cartoonish", "animated", "cartoon", "animation", "stylized"),
    "sad": ("sad", "tearjerker", "depressing", "heartbreaking", "melancholy"),
    "realistic": ("realistic", "true to life", "gritty", "naturalistic", "believable"),
    "far-fetched": ("far-fetched", "unrealistic", "implausible", "absurd", "ridiculous plot"),
    "intense": ("intense", "suspenseful", "tense", "gripping", "edge of your seat"),
    "playful": ("playful", "whimsical", "lighthearted", "goofy"),
    "gory": ("gory", "gore", "bloody", "gruesome", "splatter"),
    "serious": ("serious", "somber", "heavy", "earnest"),
    "family-friendly": ("family-friendly", "family", "good for kids", "kids", "wholesome"),
    "dark": ("dark", "bleak", "grim", "disturbing", "noir"),
}
# Tags that carry no attribute signal, as real tag data is full of them.
_OTHER_TAGS = (
    "classic",
    "based on a book",
    "twist ending",
    "overrated",
    "great soundtrack",
    "visually appealing",
    "predictable",
    "quotable",
    "slow",
    "cult film",
    "boring",
    "must see",
    "beautiful cinematography",
    "underrated",
    "great acting",
    "remake",
)

# Per attribute: adjectives for a mild (< 0.5), moderate (< 0.75) and strong presence, so that the plot says
# how much of the attribute a movie has, not just whether.
_ADJECTIVES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "funny": (
        ("mildly amusing", "gently humorous", "wry", "lightly comic"),
        ("witty", "amusing", "funny", "comic", "good-humoured"),
        ("riotous", "hilarious", "uproarious", "side-splitting", "laugh-out-loud"),
    ),
    "scary": (
        ("faintly spooky", "mildly creepy", "slightly eerie"),
        ("scary", "creepy", "eerie", "unsettling", "frightening"),
        ("terrifying", "bone-chilling", "nightmarish", "spine-tingling", "petrifying"),
    ),
    "romantic": (
        ("lightly romantic", "faintly flirtatious", "sweet"),
        ("romantic", "tender", "heartfelt", "warm"),
        ("swooning", "deeply romantic", "passionate", "achingly tender"),
    ),
    "violent": (
        ("occasionally violent", "scrappy", "mildly rough"),
        ("violent", "rough", "hard-hitting", "bruising"),
        ("brutally violent", "savage", "bone-crunching", "merciless"),
    ),
    "thought-provoking": (
        ("quietly reflective", "mildly thoughtful", "curious"),
        ("thought-provoking", "thoughtful", "probing", "reflective"),
        ("profound", "deeply thought-provoking", "philosophical", "mind-expanding"),
    ),
    "action-packed": (
        ("brisk", "lively", "occasionally thrilling"),
        ("action-filled", "energetic", "kinetic", "fast-moving"),
        ("action-packed", "explosive", "adrenaline-fuelled", "breakneck"),
    ),
    "cartoonish": (
        ("slightly cartoonish", "lightly stylised", "storybook"),
        ("colourful", "stylised", "larger-than-life", "cartoony"),
        ("cartoonish", "hand-drawn", "rubber-limbed", "brightly animated"),
    ),
    "sad": (
        ("wistful", "bittersweet", "faintly melancholic"),
        ("sad", "melancholy", "poignant", "mournful"),
        ("heartbreaking", "devastating", "tear-jerking", "gut-wrenching"),
    ),
    "realistic": (
        ("mostly grounded", "fairly plausible", "down-to-earth"),
        ("realistic", "grounded", "believable", "authentic"),
        ("unflinchingly realistic", "documentary-like", "true-to-life", "naturalistic"),
    ),
    "far-fetched": (
        ("slightly far-fetched", "somewhat contrived", "a little implausible"),
        ("far-fetched", "improbable", "fanciful", "over-the-top"),
        ("wildly far-fetched", "preposterous", "outlandish", "absurdly implausible"),
    ),
    "intense": (
        ("mildly tense", "quietly suspenseful", "simmering"),
        ("intense", "tense", "taut", "suspenseful"),
        ("gripping", "white-knuckle", "nerve-shredding", "unbearably tense"),
    ),
    "playful": (
        ("gently playful", "light", "whimsical"),
        ("playful", "lighthearted", "breezy", "cheeky"),
        ("exuberant", "impish", "wildly playful", "giddy"),
    ),
    "gory": (
        ("occasionally bloody", "mildly graphic", "a little gruesome"),
        ("bloody", "grisly", "graphic", "gory"),
        ("gruesome", "blood-drenched", "stomach-churning", "splatter-heavy"),
    ),
    "serious": (
        ("fairly serious", "measured", "restrained"),
        ("serious", "sober", "earnest", "grave"),
        ("deadly serious", "austere", "solemn", "weighty"),
    ),
    "family-friendly": (
        ("mostly family-friendly", "fairly gentle", "mild-mannered"),
        ("warm-hearted", "gentle", "sweet-natured", "family-friendly"),
        ("wholesome", "all-ages", "kid-friendly", "thoroughly family-friendly"),
    ),
    "dark": (
        ("slightly dark", "faintly sinister", "moody"),
        ("dark", "brooding", "shadowy", "sombre"),
        ("pitch-dark", "bleak", "nihilistic", "grim"),
    ),
}
_FREQUENCY = (
    ("now and then", "occasionally", "every so often", "here and there"),
    ("often", "regularly", "frequently", "at a steady clip"),
    ("relentlessly", "constantly", "nonstop", "in a steady barrage"),
)
# Sentences that carry one attribute; {adj}/{a_adj}/{freq} say how strongly.
_SENTENCES: dict[str, tuple[str, ...]] = {
    "funny": (
        "The humour is {adj}, with {first} stumbling from one absurd mishap to the next.",
        "{first}'s deadpan one-liners land {freq}, and {ally} nearly steals the show.",
        "Expect {adj} set pieces built on running gags and escalating misunderstandings.",
        "Jokes arrive {freq}, most of them at {first}'s expense.",
        "A botched dinner party becomes {a_adj} showcase for physical comedy.",
        "The script finds {a_adj} streak of comedy in even the grimmest situations.",
    ),
    "scary": (
        "The dread builds slowly, and when the scares come they are {adj}.",
        "Strange noises, flickering lights and a door that will not stay shut turn {pos} home into {a_adj} trap.",
        "Frights arrive {freq}, and the shadows in every corner feel {adj}.",
        "As the nights grow longer, {first} realises {sub} is being watched, and what follows is {adj}.",
        "Whispers in the walls and faces at the window give the film {a_adj} atmosphere of fear.",
        "The old legend of a thing in the woods proves {adj} and horribly true.",
    ),
    "romantic": (
        "Along the way {first} falls for {love}, and their {adj} courtship gives the story its heart.",
        "Stolen glances, long letters and one missed train make for {a_adj} love story.",
        "At its core is {a_adj} romance between {first} and {love}.",
        "Love arrives at the worst possible moment, in {a_adj} subplot that slowly takes over the film.",
        "The chemistry between {first} and {love} is {adj}, and the slow dance at the end is earned.",
        "{sub} did not come looking for love, but the film's {adj} heart says otherwise.",
    ),
    "violent": (
        "The fights are {adj}, staged with fists, bottles and whatever else is to hand.",
        "Violence erupts {freq}, and the camera never looks away.",
        "{foe} answers every setback with {a_adj} act of revenge.",
        "By the second act the body count is rising and the confrontations are {adj}.",
        "It is {a_adj} story of beatings, shootouts and broken bones.",
        "{first} learns to fight back, and the brawls that follow are {adj}.",
    ),
    "thought-provoking": (
        "Beneath the surface it asks {adj} questions about memory, guilt and what we owe each other.",
        "The film is {adj}, lingering on moral choices that have no easy answers.",
        "{first}'s journey becomes {a_adj} meditation on identity and belonging.",
        "Its {adj} ideas about freedom and responsibility stay with you long after the credits.",
        "Every conversation carries {a_adj} weight, as if the film were quietly arguing with itself.",
        "It is {a_adj} puzzle about truth and perception that invites more than one viewing.",
    ),
    "action-packed": (
        "The chase sequences are {adj}, tearing across rooftops, bridges and speeding trains.",
        "Set pieces arrive {freq}: explosions, shootouts and a finale on a collapsing bridge.",
        "It is {a_adj} ride that barely pauses for breath.",
        "{first} spends most of the film running, climbing or hanging off moving vehicles, and the stunts are {adj}.",
        "Once the plan goes wrong the film turns {adj}, with one pursuit after another.",
        "Helicopters, car chases and hand-to-hand combat make for {a_adj} second half.",
    ),
    "cartoonish": (
        "The visuals are {adj}, full of squash-and-stretch characters and impossible colours.",
        "Its {adj} world is drawn in bold lines, with talking animals and physics that bend for a gag.",
        "{first} is drawn as {a_adj} hero with enormous eyes and a rubbery walk.",
        "Everything from the villains to the vehicles looks {adj}, like a Saturday-morning cartoon come to life.",
        "The animation is {adj}, and the sidekick, a sarcastic {animal}, gets the best moments.",
        "Its look is {adj}: exaggerated faces, bouncing props and backgrounds painted like a picture book.",
    ),
    "sad": (
        "Loss hangs over every scene, and the ending is {adj}.",
        "It is {a_adj} portrait of grief, as {first} tries to say goodbye to someone {sub} cannot save.",
        "Tears come {freq}, especially in the letters {first} never sends.",
        "The film's {adj} final act will leave few dry eyes.",
        "As {pos} family drifts apart, the story turns {adj}.",
        "Its {adj} moments of loss and regret are handled without sentimentality.",
    ),
    "realistic": (
        "Shot in long, unhurried takes, it feels {adj}, as if the camera simply happened to be there.",
        "The details of {pos} working life are {adj}, down to the paperwork and the aching feet.",
        "Nothing here is glamorised; the film is {adj} about money, work and family.",
        "It is {a_adj} account drawn from the rhythms of ordinary life in {city}.",
        "The dialogue is {adj}, full of interruptions and half-finished thoughts.",
        "{first}'s struggles are {adj}, and the film resists every easy resolution.",
    ),
    "far-fetched": (
        "The premise is {adj}: a machine that swaps memories, a talking lighthouse and a plan that should never work.",
        "Logic takes a holiday {freq}, and the plot twists are {adj}.",
        "It asks you to accept {a_adj} chain of coincidences, time loops and secret societies.",
        "{first} discovers {sub} can bend time, {a_adj} turn that the film fully commits to.",
        "Its {adj} story involves parallel worlds, a missing moon and a very persuasive robot.",
        "The plot is {adj}, and it is hard to care whether any of it makes sense.",
    ),
    "intense": (
        "The tension is {adj}, tightening with every ticking clock and locked door.",
        "It is {a_adj} ninety minutes, with {first} forced into one impossible decision after another.",
        "Scenes play out in near real time, and the result is {adj}.",
        "Every phone call brings worse news, and the pressure on {first} is {adj}.",
        "The final standoff is {adj}, staged in a single cramped room.",
        "Suspense builds {freq}, and the film rarely lets {first} catch {pos} breath.",
    ),
    "playful": (
        "The tone is {adj}, full of games, pranks and sly winks at the audience.",
        "{first} treats every obstacle as a game, and the film's {adj} spirit is infectious.",
        "It is {a_adj} romp of costume changes, secret passwords and silly songs.",
        "Song-and-dance interludes pop up {freq}, keeping the mood {adj}.",
        "There is {a_adj} bounce to the editing, with freeze-frames and chapter titles that tease the viewer.",
        "Even the villains are {adj}, more interested in mischief than menace.",
    ),
    "gory": (
        "The effects are {adj}, and the camera lingers on every wound.",
        "Blood flows {freq}, with severed limbs and splattered walls.",
        "It is {a_adj} affair: an autopsy, a chainsaw and a very messy dinner table.",
        "The kills are {adj}, each one more inventive than the last.",
        "{first}'s encounters with the creature are {adj} and not for the squeamish.",
        "Entrails, bone and torn flesh make it {a_adj} watch.",
    ),
    "serious": (
        "It treats its subject in {a_adj} way, never reaching for a cheap laugh.",
        "The film is {adj} in tone, built on long silences and difficult conversations.",
        "{first}'s choices carry {adj} consequences, and the film weighs every one of them.",
        "It is {a_adj} look at responsibility, duty and the cost of doing the right thing.",
        "There is little levity here; the mood stays {adj} from the first scene to the last.",
        "The hearings and hospital scenes are {adj}, played without ornament.",
    ),
    "family-friendly": (
        "It is {a_adj} adventure the whole family can share, with no more than a scraped knee for danger.",
        "Parents and children alike will enjoy its {adj} story about friendship and courage.",
        "The film is {adj}, with a lesson about honesty wrapped in songs and slapstick.",
        "{first} and {pos} new friends learn to work together in {a_adj} tale.",
        "Its {adj} spirit makes it an easy choice for a rainy Sunday afternoon.",
        "Nothing here will frighten younger viewers; it stays {adj} throughout.",
    ),
    "dark": (
        "The film has {a_adj} heart, full of betrayal, addiction and quiet despair.",
        "Its world is {adj}, where nobody is innocent and every favour has a price.",
        "{first} slides toward the worst version of {obj}self, and the film follows {obj} all the way down.",
        "The humour, when it comes, is {adj} and bitter.",
        "Shadows, rain and neon give {city} {a_adj} cast.",
        "It is {a_adj} story about what people will do to survive.",
    ),
}

# Genres follow attributes (funny -> Comedy, scary -> Horror, ...); an archetype adds its own genres.
GENRE_WEIGHTS: dict[str, dict[str, float]] = {
    "Action": {"action-packed": 1.0, "violent": 0.4, "intense": 0.3},
    "Adventure": {"action-packed": 0.5, "far-fetched": 0.4, "playful": 0.3, "family-friendly": 0.2},
    "Animation": {"cartoonish": 1.1},
    "Children": {"family-friendly": 0.9, "cartoonish": 0.3, "playful": 0.2},
    "Comedy": {"funny": 1.0, "playful": 0.3},
    "Crime": {"violent": 0.4, "dark": 0.4, "realistic": 0.2, "intense": 0.2},
    "Documentary": {"realistic": 0.5, "thought-provoking": 0.2},
    "Drama": {"serious": 0.6, "sad": 0.5, "thought-provoking": 0.3, "realistic": 0.3},
    "Fantasy": {"far-fetched": 0.7, "cartoonish": 0.2},
    "Horror": {"scary": 1.0, "gory": 0.6},
    "Musical": {"playful": 0.4, "romantic": 0.2},
    "Mystery": {"dark": 0.3, "thought-provoking": 0.3, "intense": 0.2},
    "Romance": {"romantic": 1.1},
    "Sci-Fi": {"far-fetched": 0.8, "thought-provoking": 0.2},
    "Thriller": {"intense": 0.9, "scary": 0.3, "dark": 0.3},
    "War": {"violent": 0.3, "serious": 0.3, "sad": 0.2},
    "Western": {"violent": 0.2},
}
_GENRE_THRESHOLD = 0.75

# (weight, attribute affinities for the strong attributes, genres it adds); unlisted attributes get a small
# base affinity so that any combination can occur.
_ARCHETYPES: tuple[tuple[float, dict[str, float], tuple[str, ...]], ...] = (
    (1.6, {"funny": 4, "playful": 2, "romantic": 1, "far-fetched": 1, "family-friendly": 0.8}, ("Comedy",)),
    (0.9, {"romantic": 4, "funny": 2.5, "playful": 1.5, "sad": 0.5}, ("Romance", "Comedy")),
    (1.0, {"scary": 4, "gory": 2, "dark": 2, "intense": 1.5, "violent": 1}, ("Horror",)),
    (1.1, {"action-packed": 4, "violent": 2, "intense": 2, "far-fetched": 1, "funny": 0.6}, ("Action",)),
    (0.7, {"intense": 4, "dark": 2, "violent": 1, "scary": 1, "realistic": 1}, ("Thriller",)),
    (0.8, {"dark": 2.5, "violent": 2, "realistic": 2, "serious": 1.5, "intense": 1.5}, ("Crime",)),
    (2.2, {"serious": 3, "sad": 2.5, "thought-provoking": 2, "realistic": 2, "romantic": 1}, ("Drama",)),
    (0.4, {"violent": 2.5, "serious": 2.5, "sad": 2, "realistic": 1.5, "intense": 1.5, "gory": 1}, ("War",)),
    (
        0.7,
        {"cartoonish": 4, "family-friendly": 3, "playful": 2.5, "funny": 2, "far-fetched": 1},
        ("Animation", "Children"),
    ),
    (0.7, {"far-fetched": 4, "thought-provoking": 2, "action-packed": 1.5, "intense": 1, "dark": 1}, ("Sci-Fi",)),
    (
        0.5,
        {"far-fetched": 3.5, "action-packed": 1.5, "playful": 1, "romantic": 1, "family-friendly": 1, "dark": 1},
        ("Fantasy", "Adventure"),
    ),
    (0.3, {"realistic": 4, "thought-provoking": 3, "serious": 2, "sad": 1}, ("Documentary",)),
    (0.3, {"playful": 4, "romantic": 2, "funny": 1.5, "family-friendly": 1.5, "sad": 0.5}, ("Musical",)),
    (0.3, {"violent": 2.5, "serious": 1.5, "intense": 1.5, "action-packed": 1.5, "dark": 1}, ("Western",)),
    (0.5, {"thought-provoking": 2.5, "dark": 2, "intense": 2, "scary": 1}, ("Mystery",)),
)
_BASE_AFFINITY = 0.15
# A strong attribute rules these out (a family film is not gory), keeping movies coherent.
_EXCLUDES = {
    "family-friendly": ("gory", "violent", "dark"),
    "gory": ("family-friendly",),
    "violent": ("family-friendly",),
    "dark": ("family-friendly",),
    "cartoonish": ("realistic",),
    "realistic": ("cartoonish", "far-fetched"),
    "far-fetched": ("realistic",),
    "playful": ("serious",),
    "serious": ("playful",),
}

# Title words: per attribute (adjectives, nouns), and generic ones for variety.
_TITLE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "funny": (("Crazy", "Big", "Awkward", "Lucky", "Wild"), ("Mix-Up", "Weekend", "Roommate", "Reunion", "Road Trip")),
    "scary": (("Haunted", "Cursed", "Silent", "Dead", "Hollow"), ("Whisper", "Cellar", "Haunting", "Visitor", "Curse")),
    "romantic": (
        ("Endless", "Sweet", "Sudden", "Tender", "Paper"),
        ("Heart", "Kiss", "Promise", "Serenade", "Letters"),
    ),
    "violent": (
        ("Bloody", "Iron", "Savage", "Brutal", "Hard"),
        ("Vendetta", "Reckoning", "Fury", "Payback", "Knuckles"),
    ),
    "thought-provoking": (
        ("Inner", "Hidden", "Infinite", "Quiet", "Open"),
        ("Question", "Mirror", "Theory", "Echo", "Paradox"),
    ),
    "action-packed": (
        ("Maximum", "Rapid", "Full", "Total", "Steel"),
        ("Strike", "Velocity", "Impact", "Pursuit", "Breach"),
    ),
    "cartoonish": (("Wacky", "Bouncing", "Tiny", "Jolly", "Fuzzy"), ("Critters", "Gizmo", "Wobble", "Doodle", "Tales")),
    "sad": (("Broken", "Fading", "Last", "Distant", "Grey"), ("Goodbye", "Rain", "Lament", "Farewell", "Tears")),
    "realistic": (
        ("Ordinary", "Working", "Common", "Plain", "Local"),
        ("Streets", "Factory", "Harbor", "Shift", "Kitchen"),
    ),
    "far-fetched": (
        ("Impossible", "Quantum", "Upside-Down", "Parallel", "Cosmic"),
        ("Planet", "Machine", "Portal", "Dimension", "Robot"),
    ),
    "intense": (
        ("Zero", "Final", "Deadly", "Narrow", "Ticking"),
        ("Pressure", "Countdown", "Edge", "Standoff", "Deadline"),
    ),
    "playful": (("Merry", "Funky", "Dizzy", "Sunny", "Happy"), ("Caper", "Games", "Party", "Carnival", "Mischief")),
    "gory": (("Red", "Raw", "Rotten", "Severed", "Hungry"), ("Butcher", "Carnage", "Massacre", "Flesh", "Bones")),
    "serious": (
        ("Grave", "Sober", "Long", "Public", "Heavy"),
        ("Verdict", "Testament", "Witness", "Inheritance", "Burden"),
    ),
    "family-friendly": (
        ("Little", "Magic", "Brave", "Happy", "Merry"),
        ("Puppy", "Treehouse", "Pony", "Holiday", "Dragon"),
    ),
    "dark": (("Black", "Fallen", "Cold", "Wicked", "Crooked"), ("Abyss", "Sin", "Descent", "Nightfall", "Ashes")),
}
_TITLE_ADJECTIVES = (
    "Long", "Hidden", "Lost", "Golden", "Quiet", "Second", "Eternal", "Secret", "Crimson", "Northern", "Burning",
    "Bitter", "Perfect", "Electric", "Blue", "Midnight", "Forgotten", "Sleeping", "American", "Lonely", "Stolen",
)  # fmt: skip
_TITLE_NOUNS = (
    "River", "Garden", "Road", "House", "Station", "Letter", "Island", "Bridge", "Harvest", "Crossing", "Light",
    "Season", "Journey", "Horizon", "Stranger", "Affair", "Covenant", "Summer", "Winter", "Frontier", "Tide",
    "Ghost", "Hour", "Wedding", "Orchard", "Line", "Empire", "Signal", "Crown", "Compass", "Lantern", "Anthem",
)  # fmt: skip
_NUMBERS = ("Two", "Three", "Four", "Seven", "Nine", "Twelve", "Forty", "Ten Thousand", "A Hundred")
_TITLE_FORMS = (
    "The {Adj} {Noun}",
    "{Noun}",
    "{Noun} of {City}",
    "{First}'s {Noun}",
    "The {Noun} of {First} {Last}",
    "{Adj} {Noun}",
    "A {Noun} in {City}",
    "Goodbye, {City}",
    "{Noun}: The {Adj} {Noun2}",
    "Night of the {Adj} {Noun}",
    "{Number} {Noun}s",
    "Last {Noun} in {City}",
    "{First} and the {Noun}",
    "The {Noun} and the {Noun2}",
    'The "{Adj}" {Noun}',
    "{Adj}, {Adj2} {Noun}",
    "Return to {City}",
    "{Noun} Street",
)

_FIRST_NAMES = (
    (
        "James", "Tomás", "Kofi", "Arjun", "Mikhail", "Luca", "Samuel", "Hiroshi", "Omar", "Pieter", "Declan",
        "Mateo", "Felix", "Jonah", "Idris", "Ravi", "Gustav", "Elliot", "Marcus", "Theo", "Bruno", "Darius",
        "Henrik", "Walter", "Ezra", "Joaquín", "Otis", "Kenji", "Anton", "Silas",
    ),
    (
        "Maria", "Chloé", "Aisha", "Ingrid", "Mei", "Priya", "Rosa", "Hannah", "Leila", "Nadia", "Greta", "Zoë",
        "Fatima", "Clara", "Yuki", "Imogen", "Beatriz", "Ada", "Freya", "Sofia", "Noor", "Lena", "Margot",
        "Esther", "Dolores", "Agnes", "Tamsin", "Ines", "Wren", "Olga",
    ),
)  # fmt: skip
_LAST_NAMES = (
    "Olsen", "Okafor", "Brennan", "Castillo", "Nakamura", "Petrov", "Lindqvist", "Moreau", "Haddad", "Kowalski",
    "Fitzgerald", "Ortega", "Achebe", "Sato", "Varga", "Mensah", "Novak", "Whitaker", "Delacroix", "Ferreira",
    "Abbott", "Rahman", "Chen", "Ibarra", "Holm", "Quinn", "Marchetti", "Dubois", "Kaplan", "Osei", "Park",
    "Reyes", "Sandoval", "Thorne", "Valdez", "Winslow", "Yilmaz", "Bauer", "Carver", "Doyle", "Eriksen", "Gallo",
    "Hale", "Iverson", "Jaramillo", "Kemp", "Lowell", "Marsh", "Nyberg", "Pruitt", "Rowe", "Stroud", "Tanaka",
    "Vance", "Webb", "O'Connell", "Szabo", "Lindgren", "Mahler", "Cruz",
)  # fmt: skip
_CREATURE_NAMES = ("Pip", "Biscuit", "Juniper", "Waffles", "Ziggy", "Clementine", "Mortimer", "Pepper", "Bolt", "Nib")
_CREATURE_TRAITS = ("curious", "clumsy", "brave little", "shy", "boastful", "tiny", "stubborn", "cheerful")
_ANIMALS = ("fox", "hedgehog", "penguin", "robot", "dragon", "mouse", "parrot", "tortoise", "otter", "goat", "raccoon")
_TRAITS = (
    "retired", "disgraced", "newly divorced", "ambitious", "reclusive", "stubborn", "lonely", "young", "ageing",
    "idealistic", "out-of-work", "grieving", "restless", "cynical", "timid", "hot-headed", "widowed", "small-time",
    "overworked", "naive", "eccentric", "former",
)  # fmt: skip
_JOBS = (
    "pastry chef", "night-shift nurse", "schoolteacher", "boxer", "taxi driver", "ship's cook", "botanist",
    "insurance clerk", "jazz pianist", "lighthouse keeper", "detective", "wedding planner", "surgeon", "mechanic",
    "magician", "journalist", "architect", "beekeeper", "mail carrier", "lawyer", "firefighter", "trawler captain",
    "librarian", "locksmith", "stunt driver", "radio host", "astronomer", "art forger", "farmer", "hotel concierge",
    "translator", "veterinarian", "bus driver", "tailor", "museum guard", "pilot", "bartender", "accountant",
    "piano tuner", "zookeeper", "sound engineer", "dog walker", "chess player", "carpenter", "cartographer",
    "diplomat", "photographer", "poet", "pharmacist", "welder", "park ranger", "train conductor", "nun",
    "cab dispatcher", "crossword setter", "undertaker",
)  # fmt: skip
_RELATIVES = ("sister", "brother", "grandmother", "uncle", "cousin", "oldest friend", "neighbour", "daughter", "son")
_FOES = (
    "a ruthless developer", "the local sheriff", "a rival {job}", "{pos} former partner", "a corrupt mayor",
    "a mysterious collector", "a jealous colleague", "an old enemy", "a loan shark", "the new landlord",
)  # fmt: skip
_CITIES = (
    "Lisbon", "Chicago", "Osaka", "Marseille", "Glasgow", "Buenos Aires", "Montreal", "Naples", "Detroit", "Seoul",
    "Reykjavik", "Cape Town", "Mumbai", "Prague", "New Orleans", "Melbourne", "Istanbul", "Dublin", "Helsinki",
    "Havana", "Lagos", "Vancouver", "Kraków", "Manila", "Bristol", "Baltimore", "Tangier", "Oslo", "Santiago",
    "Hamburg", "Tucson", "Valparaíso", "Leeds", "Trieste", "Nairobi",
)  # fmt: skip
_GENERAL_SETTINGS = (
    "in {city}",
    "in {decade}s {city}",
    "in present-day {city}",
    "in a small fishing village near {city}",
    "in the suburbs of {city}",
    "on a remote island off the coast near {city}",
    "in a mountain town above {city}",
    "in a crumbling hotel in {city}",
    "on the night buses of {city}",
)
_SETTINGS = {
    "Sci-Fi": (
        "aboard a failing space station",
        "on a desert moon",
        "in a flooded future {city}",
        "in {city} in the year {future}",
        "on a research base at the bottom of the sea",
        "on a generation ship halfway to nowhere",
    ),
    "Fantasy": (
        "in the mountain kingdom of {realm}",
        "in an enchanted forest beyond {realm}",
        "in the floating city of {realm}",
        "in a village at the edge of {realm}",
    ),
    "Western": (
        "in the frontier town of {town}",
        "on a cattle ranch in 1880s Wyoming",
        "along the Texas border in the 1870s",
        "in a silver-mining camp called {town}",
    ),
}
_WARS = (  # (earliest release year, setting)
    (1930, "in the trenches of 1917"),
    (1930, "on the Western Front"),
    (1945, "in occupied France in 1944"),
    (1945, "in the Pacific in 1943"),
    (1945, "during the siege of Leningrad"),
    (1955, "on a frozen ridge in Korea"),
    (1970, "in the jungles of Vietnam"),
    (1995, "in the desert during the Gulf War"),
)
_REALMS = ("Eldmoor", "Caradwen", "Vell", "Ostrovar", "Thistlemere", "Quorra", "Brannoch", "Illyth")
_TOWNS = ("Dry Creek", "Coldwater", "Redemption", "Hollow Rock", "Paradise Flats", "Tombstone Gulch")
_GENRE_NOUNS = {
    "Action": ("action film", "action thriller"),
    "Adventure": ("adventure", "quest story", "adventure yarn"),
    "Animation": ("animated feature", "cartoon adventure"),
    "Children": ("children's film", "family film"),
    "Comedy": ("comedy", "farce", "comic caper"),
    "Crime": ("crime drama", "crime story", "gangster picture"),
    "Documentary": ("documentary", "nonfiction film"),
    "Drama": ("drama", "character study", "family drama"),
    "Fantasy": ("fantasy", "fairy tale", "fable"),
    "Horror": ("horror film", "chiller", "ghost story"),
    "Musical": ("musical", "song-and-dance picture"),
    "Mystery": ("mystery", "whodunit", "puzzle film"),
    "Romance": ("romance", "love story", "romantic drama"),
    "Sci-Fi": ("science-fiction film", "sci-fi story", "space opera"),
    "Thriller": ("thriller", "suspense film"),
    "War": ("war film", "war drama"),
    "Western": ("western", "frontier saga"),
}
_CONFLICTS = {
    "Action": (
        "must rescue {pos} kidnapped {relative} from an arms dealer",
        "is framed for an assassination and goes on the run",
        "has 48 hours to stop a stolen warhead from leaving the country",
        "takes on the cartel that burned down {pos} village",
        "must escort a key witness across a hostile city",
    ),
    "Adventure": (
        "sets out to find a lost city using {pos} grandfather's map",
        "joins a treasure hunt across three continents",
        "must sail an old schooner around the world to claim an inheritance",
        "leads a ragtag expedition into the jungle",
        "goes searching for a legendary shipwreck",
    ),
    "Animation": (
        "teams up with a runaway toy to find the way home",
        "must save the enchanted forest from a greedy tycoon",
        "dreams of becoming the first of {pos} kind to fly",
        "discovers a secret world beneath the city's rooftops",
    ),
    "Children": (
        "tries to keep a stray puppy hidden from {pos} strict parents",
        "must win the school science fair to save the treehouse",
        "befriends a lonely dragon living in the lake",
        "helps a lost alien get back to its family",
    ),
    "Comedy": (
        "pretends to be {pos} own twin to keep two jobs",
        "accidentally inherits a failing circus",
        "must plan a wedding in a week for a couple who hate each other",
        "lies about being rich to impress {pos} new neighbours",
        "is mistaken for a famous spy at a dentists' convention",
    ),
    "Crime": (
        "is drawn into a jewel heist by {pos} charming old cellmate",
        "investigates a string of robberies that lead back to the police",
        "tries to pay off a gambling debt to the wrong people",
        "goes undercover inside a smuggling ring",
    ),
    "Documentary": (
        "spends the last season of {pos} family's fishing business in front of the camera",
        "spends a year recording the lives of night-shift workers",
        "returns to {pos} hometown to find out why the factory closed",
        "follows the fight over a river that three towns depend on",
    ),
    "Drama": (
        "returns home to care for {pos} ailing father",
        "struggles to keep the family bakery afloat",
        "must decide whether to testify against {pos} best friend",
        "rebuilds {pos} life after a long prison sentence",
        "fights to keep custody of {pos} son",
    ),
    "Fantasy": (
        "discovers {sub} is heir to a forgotten throne",
        "must return a stolen crown to the queen of the fairies",
        "is cursed to live the same winter forever",
        "bargains with a river spirit to save {pos} village",
    ),
    "Horror": (
        "moves into an old farmhouse with a terrible history",
        "wakes up to find the whole town has vanished",
        "is stalked by something that wears familiar faces",
        "spends the night in an abandoned asylum on a dare",
        "uncovers a ritual that the villagers repeat every hundred years",
    ),
    "Musical": (
        "dreams of Broadway while working in a laundromat",
        "must put on the school show with no money and no stage",
        "joins a travelling band of singing sailors",
        "writes one last song to win back {pos} former partner",
    ),
    "Mystery": (
        "investigates the disappearance of a famous novelist",
        "receives letters from a woman who died twenty years ago",
        "must solve a murder on a snowbound train",
        "finds a locked room and a body that should not be there",
    ),
    "Romance": (
        "falls for the one person {sub} swore never to date",
        "reconnects with a childhood sweetheart at a wedding",
        "exchanges anonymous letters with a stranger",
        "agrees to a fake engagement to fool {pos} family",
    ),
    "Sci-Fi": (
        "picks up a signal from deep space that predicts the future",
        "is the last crew member awake on a long voyage",
        "tests a machine that can copy a human mind",
        "must stop an artificial intelligence from taking over the power grid",
    ),
    "Thriller": (
        "witnesses a murder and becomes the killer's next target",
        "gets a phone call from someone who knows all {pos} secrets",
        "must find a bomb hidden somewhere in a crowded stadium",
        "realises {pos} new partner is not who they claim to be",
    ),
    "War": (
        "leads a small unit behind enemy lines",
        "hides a family of refugees in {pos} cellar",
        "must deliver a message that could stop a massacre",
        "tries to survive a brutal winter siege",
    ),
    "Western": (
        "rides into a lawless town to avenge {pos} brother",
        "must protect a homestead from cattle barons",
        "escorts a prisoner across the desert to stand trial",
        "becomes sheriff of a town nobody else will defend",
    ),
}
_INCITING = (
    "a stranger arrives with a suitcase full of cash",
    "the factory closes",
    "{pos} mother dies and leaves a strange will",
    "a storm knocks out the power",
    "an old photograph turns up",
    "the money runs out",
    "a letter arrives twenty years late",
    "{sub} loses {pos} job",
    "a child goes missing",
    "a comet appears in the sky",
)
_OPENINGS = (
    "{A_adj} {gnoun} about {name}, {prof} {setting} who {conflict}.",
    "{Setting}, {name}, {prof}, {conflict}.",
    "{name} is {prof} {setting}. When {inciting}, {sub} {conflict}.",
    "When {inciting} {setting}, {prof} named {name} {conflict}.",
    "{name}, {prof}, {conflict} in this {adj} {gnoun} set {setting}.",
    "This {adj} {gnoun} follows {name}, {prof} {setting} who {conflict}.",
)
_COMPLICATIONS = (
    "An old friend turns up with a proposal that is too good to refuse.",
    "A letter from {pos} estranged {relative} changes everything.",
    "Complicating matters is {ally}, who knows more than they let on.",
    "Nothing goes to plan once {foe} takes an interest.",
    "The deeper {sub} digs, the less {sub} trusts the people around {obj}.",
    "A secret from {pos} past threatens to undo everything.",
    "Help comes from an unlikely place: {ally}.",
    "{first} has one week, no money and no plan.",
    "Meanwhile {foe} is closing in.",
    "Old loyalties are tested when {ally} makes a choice that cannot be undone.",
    "Along the way {sub} must face the mistake {sub} has carried for years.",
    "Each step forward costs {first} something {sub} cannot get back.",
    "To succeed, {sub} will need the help of {ally}.",
)
_CLOSINGS = (
    "The result is {adj1} and {adj2} in equal measure.",
    "It is {adj1}, often {adj2}, and hard to forget.",
    "By the final scene it has proved as {adj1} as it is {adj2}.",
    "{adj1} and {adj2}, it rewards a patient audience.",
    "Few films manage to be this {adj1} and this {adj2} at once.",
    "Critics called it {adj1} and {adj2}.",
    "Audiences found it {adj1}, if at times {adj2}.",
)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Everything that shapes the generated catalogue; same config -> byte-identical files."""

    seed: int = 0
    n_movies: int = 3000
    n_users: int = 2000
    attributes: tuple[str, ...] = ATTRIBUTES
    genres: tuple[str, ...] = GENRES
    years: tuple[int, int] = (1930, 2019)  # release years
    rating_years: tuple[int, int] = (1996, 2019)  # when users rate (MovieLens: 1995-2019)
    strong_attributes: tuple[int, int] = (2, 5)  # per movie, inclusive
    max_genres: int = 4
    ratings_per_user_mean: float = 75.0  # log-normal activity above the minimum
    ratings_per_user_min: int = 20  # as in MovieLens
    activity_sigma: float = 1.0
    popularity_skew: float = 1.0  # Zipf exponent of movie popularity
    taste_selection: float = 3.0  # how much users pick movies they will like (at 1.0 popularity dominates)
    rating_base: float = 2.9  # observed mean 4.05 with taste_selection 3 (MovieLens: 3.53): users pick what they like
    taste_scale: float = 1.0
    quality_sd: float = 0.4
    user_bias_sd: float = 0.4
    rating_noise: float = 0.6
    half_star_fraction: float = 0.6  # the other users rate in whole stars
    tagger_fraction: float = 0.3
    tags_per_tagger: float = 12.0
    tag_noise: float = 0.1  # a tag names a random attribute
    other_tag_rate: float = 0.15  # a tag names no attribute ("classic", "twist ending")

    def __post_init__(self):
        unknown = [a for a in self.attributes if a not in _ADJECTIVES]
        if unknown or len(set(self.attributes)) != len(self.attributes) or len(self.attributes) < 2:
            raise ValueError(f"attributes must be >= 2 distinct names from {ATTRIBUTES}; unknown: {unknown}")
        unknown = [g for g in self.genres if g not in GENRE_WEIGHTS]
        if unknown or len(set(self.genres)) != len(self.genres) or not self.genres:
            raise ValueError(f"genres must be distinct names from {GENRES}; unknown: {unknown}")
        if self.n_movies < 2 or self.n_users < 1:
            raise ValueError(f"need n_movies >= 2 and n_users >= 1; got {self.n_movies}, {self.n_users}")
        lo, hi = self.strong_attributes
        if not 1 <= lo <= hi <= len(self.attributes):
            raise ValueError(f"strong_attributes {self.strong_attributes} must lie in [1, {len(self.attributes)}]")
        if self.years[0] > self.years[1] or self.rating_years[0] > self.rating_years[1]:
            raise ValueError(f"year ranges must be ordered: {self.years}, {self.rating_years}")
        if self.rating_years[1] < self.years[1]:
            raise ValueError(f"rating_years {self.rating_years} must last until the newest release {self.years[1]}")
        if not 1 <= self.ratings_per_user_min <= self.ratings_per_user_mean:
            raise ValueError("need 1 <= ratings_per_user_min <= ratings_per_user_mean")


@dataclasses.dataclass
class SyntheticCatalogue:
    """The generated world in memory: what the CSV files hold plus the ground truth behind them."""

    config: SyntheticConfig
    movie_ids: np.ndarray  # (M,) int64, increasing with gaps like MovieLens
    titles: list[str]  # "Title (1994)"
    genres: list[tuple[str, ...]]  # alphabetical, as MovieLens lists them
    plots: list[str]
    years: np.ndarray  # (M,) int64
    movie_attributes: np.ndarray  # (M, A) float32 in [0, 1]
    movie_quality: np.ndarray  # (M,) float32, stars added to every rating
    movie_popularity: np.ndarray  # (M,) float32, sums to 1
    user_ids: np.ndarray  # (U,) int64, 1..U
    user_taste: np.ndarray  # (U, A) float32, weights on centred attributes
    user_bias: np.ndarray  # (U,) float32
    ratings: np.ndarray  # structured (userId, movieId, rating, timestamp), sorted by user then movie
    tags: list[tuple[int, int, str, int]]  # (userId, movieId, tag, timestamp), sorted likewise

    def ground_truth(self) -> dict[str, np.ndarray]:
        """What `load_ground_truth` returns for this catalogue once written."""
        return dict(
            attributes=np.array(self.config.attributes),
            movie_ids=self.movie_ids,
            movie_attributes=self.movie_attributes,
            movie_quality=self.movie_quality,
            movie_popularity=self.movie_popularity,
            user_ids=self.user_ids,
            user_taste=self.user_taste,
            user_bias=self.user_bias,
        )


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _article(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _tier(value: float) -> int:
    return 0 if value < 0.5 else 1 if value < 0.75 else 2


def _movie_attributes(rng: np.random.Generator, config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """(M, A) attributes in [0, 1] and each movie's archetype: 2-5 strong attributes, weak elsewhere."""
    names = config.attributes
    col = {a: i for i, a in enumerate(names)}
    weights = np.array([w for w, _, _ in _ARCHETYPES])
    archetype = rng.choice(len(_ARCHETYPES), size=config.n_movies, p=weights / weights.sum())
    attrs = (0.25 * rng.beta(1.2, 6.0, size=(config.n_movies, len(names)))).astype(np.float64)
    lo, hi = config.strong_attributes
    for m in range(config.n_movies):
        affinity = np.full(len(names), _BASE_AFFINITY)
        for a, w in _ARCHETYPES[archetype[m]][1].items():
            if a in col:
                affinity[col[a]] = w
        for _ in range(int(rng.integers(lo, hi + 1))):
            if affinity.sum() <= 0:
                break
            a = int(rng.choice(len(names), p=affinity / affinity.sum()))
            attrs[m, a] = 0.35 + 0.65 * rng.beta(2.5, 1.5)
            affinity[a] = 0.0
            for b in _EXCLUDES.get(names[a], ()):
                if b in col:
                    affinity[col[b]] = 0.0
    return attrs, archetype


def _movie_genres(rng: np.random.Generator, config: SyntheticConfig, attrs: np.ndarray, archetype: np.ndarray):
    """Genres from attributes plus the archetype's own; the best-scoring genre is the plot's genre."""
    weights = np.array([[GENRE_WEIGHTS[g].get(a, 0.0) for a in config.attributes] for g in config.genres])
    bonus = np.array([[0.6 if g in genres else 0.0 for g in config.genres] for _, _, genres in _ARCHETYPES])
    score = attrs @ weights.T + bonus[archetype] + rng.normal(0.0, 0.15, size=(len(attrs), len(config.genres)))
    out, primary = [], []
    for row in score:
        order = np.argsort(-row, kind="stable")
        chosen = [int(g) for g in order[: config.max_genres] if row[g] >= _GENRE_THRESHOLD] or [int(order[0])]
        out.append(tuple(sorted(config.genres[g] for g in chosen)))
        primary.append(config.genres[int(order[0])])
    return out, primary


def _title(rng: np.random.Generator, names: tuple[str, ...], row: np.ndarray, taken: set[str]) -> str:
    """A unique, plausible title whose words lean toward the movie's strongest attribute."""
    for attempt in range(30):
        themed = _TITLE_WORDS[names[int(np.argmax(row))]]
        adjs = themed[0] if rng.random() < 0.5 else _TITLE_ADJECTIVES
        nouns = themed[1] if rng.random() < 0.6 else _TITLE_NOUNS
        title = _pick(rng, _TITLE_FORMS).format(
            Adj=_pick(rng, adjs),
            Adj2=_pick(rng, _TITLE_ADJECTIVES),
            Noun=_pick(rng, nouns),
            Noun2=_pick(rng, _TITLE_NOUNS),
            City=_pick(rng, _CITIES),
            First=_pick(rng, _FIRST_NAMES[attempt % 2]),
            Last=_pick(rng, _LAST_NAMES),
            Number=_pick(rng, _NUMBERS),
        )
        if title not in taken:
            return title
    part = 2
    while f"{title}: Part {part}" in taken:
        part += 1
    return f"{title}: Part {part}"


def _plot(rng: np.random.Generator, config: SyntheticConfig, row: np.ndarray, genre: str, year: int) -> str:
    """A 3-6 sentence plot written from the movie's attributes, varied in wording and order."""
    names = config.attributes
    strong = [int(a) for a in np.argsort(-row, kind="stable") if row[a] >= 0.35]

    def adj(a: int) -> str:
        return _pick(rng, _ADJECTIVES[names[a]][_tier(row[a])])

    gender = int(rng.integers(2))
    if "cartoonish" in names and row[names.index("cartoonish")] >= 0.5 and rng.random() < 0.6:
        first = _pick(rng, _CREATURE_NAMES)
        name = first
        prof = _article(f"{_pick(rng, _CREATURE_TRAITS)} {_pick(rng, _ANIMALS)}")
    else:
        first = _pick(rng, _FIRST_NAMES[gender])
        name = f"{first} {_pick(rng, _LAST_NAMES)}"
        prof = (
            _article(f"{_pick(rng, _TRAITS)} {_pick(rng, _JOBS)}")
            if rng.random() < 0.7
            else _article(_pick(rng, _JOBS))
        )
    slots = dict(
        first=first,
        name=name,
        prof=prof,
        sub=("he", "she")[gender],
        obj=("him", "her")[gender],
        pos=("his", "her")[gender],
        city=_pick(rng, _CITIES),
        relative=_pick(rng, _RELATIVES),
        job=_pick(rng, _JOBS),
        animal=_pick(rng, _ANIMALS),
        gnoun=_pick(rng, _GENRE_NOUNS[genre]),
    )
    lover = _pick(rng, _FIRST_NAMES[1 - gender if rng.random() < 0.85 else gender])
    slots["love"] = f"{_article(_pick(rng, _JOBS))} named {lover}" if rng.random() < 0.6 else lover
    ally = (f"{_article(_pick(rng, _JOBS))} named {_pick(rng, _FIRST_NAMES[int(rng.integers(2))])}", "{pos} {relative}")
    slots["ally"] = _pick(rng, ally).format(**slots)
    slots["foe"] = _pick(rng, _FOES).format(**slots)
    slots["inciting"] = _pick(rng, _INCITING).format(**slots)
    slots["conflict"] = _pick(rng, _CONFLICTS[genre]).format(**slots)
    if genre == "War":
        setting = _pick(rng, [s for y0, s in _WARS if y0 <= year] or [s for _, s in _WARS[:2]])
    else:
        setting = _pick(rng, _SETTINGS.get(genre, _GENERAL_SETTINGS))
    decade = 10 * int(rng.integers(max(1880, year - 70) // 10, year // 10 + 1))
    slots["setting"] = setting.format(
        city=slots["city"], decade=decade, future=year + int(rng.integers(80, 400)), realm=_pick(rng, _REALMS),
        town=_pick(rng, _TOWNS),
    )  # fmt: skip
    slots["Setting"] = _cap(slots["setting"])
    slots["adj"] = adj(strong[0])
    slots["A_adj"] = _cap(_article(slots["adj"]))

    def sentence(template: str, **extra: str) -> str:
        return _cap(template.format(**{**slots, **extra}))

    opening = _pick(rng, _OPENINGS)
    slots_left = int(rng.integers(3, 7)) - opening.count(".")  # one opening is two sentences
    mentioned = strong[: max(slots_left, 1)]
    middle = []
    for a in mentioned:
        word = adj(a)
        freq = _pick(rng, _FREQUENCY[_tier(row[a])])
        middle.append(sentence(_pick(rng, _SENTENCES[names[a]]), adj=word, a_adj=_article(word), freq=freq))
    spare = max(slots_left - len(mentioned), 0)
    closing = []
    if spare and rng.random() < 0.6:
        second = strong[1] if len(strong) > 1 else strong[0]
        closing.append(sentence(_pick(rng, _CLOSINGS), adj1=adj(strong[0]), adj2=adj(second)))
        spare -= 1
    for i in rng.choice(len(_COMPLICATIONS), size=spare, replace=False):
        middle.append(sentence(_COMPLICATIONS[int(i)]))
    rng.shuffle(middle)
    return " ".join([sentence(opening), *middle, *closing])


def _user_tastes(rng: np.random.Generator, config: SyntheticConfig) -> np.ndarray:
    """(U, A) tastes: 2-4 liked attributes (often an archetype's, like horror fans), 1-3 disliked, small elsewhere."""
    names = config.attributes
    taste = rng.normal(0.0, 0.15, size=(config.n_users, len(names)))
    weights = np.array([w for w, _, _ in _ARCHETYPES])
    for u in range(config.n_users):
        fan = _ARCHETYPES[int(rng.choice(len(_ARCHETYPES), p=weights / weights.sum()))][1]
        affinity = np.array([fan.get(a, 0.0) + 0.5 for a in names])
        liked = rng.choice(
            len(names), size=min(int(rng.integers(2, 5)), len(names) - 1), replace=False, p=affinity / affinity.sum()
        )
        taste[u, liked] = rng.uniform(0.5, 1.5, size=len(liked))
        rest = np.setdiff1d(np.arange(len(names)), liked)
        disliked = rng.choice(rest, size=min(int(rng.integers(1, 4)), len(rest)), replace=False)
        taste[u, disliked] = -rng.uniform(0.5, 1.5, size=len(disliked))
    return taste


def _timestamp(year: int) -> int:
    return calendar.timegm((year, 1, 1, 0, 0, 0))


def generate(config: SyntheticConfig | None = None) -> SyntheticCatalogue:
    """Builds the whole catalogue in memory from `config.seed` (a few seconds for the default size)."""
    config = config or SyntheticConfig()
    rng = np.random.default_rng(config.seed)
    names = config.attributes
    n_movies, n_users = config.n_movies, config.n_users

    attrs, archetype = _movie_attributes(rng, config)
    genres, primary = _movie_genres(rng, config, attrs, archetype)
    y0, y1 = config.years
    years = (y0 + np.floor((y1 - y0 + 1) * rng.beta(3.0, 1.3, size=n_movies))).astype(np.int64).clip(y0, y1)
    release = np.array([_timestamp(int(y)) for y in years]) + rng.integers(0, 365 * 86400, size=n_movies)
    quality = rng.normal(0.0, config.quality_sd, size=n_movies)
    rank = np.empty(n_movies, np.int64)  # better movies tend to be more popular
    rank[np.argsort(-(quality / config.quality_sd * 0.5 + rng.normal(size=n_movies)), kind="stable")] = np.arange(
        n_movies
    )
    popularity = (rank + 1.0) ** -config.popularity_skew
    popularity /= popularity.sum()
    movie_ids = np.cumsum(rng.geometric(0.3, size=n_movies)).astype(np.int64)  # gaps, as in MovieLens

    taken: set[str] = set()
    titles, plots = [], []
    for m in range(n_movies):
        plots.append(_plot(rng, config, attrs[m], primary[m], int(years[m])))
        title = _title(rng, names, attrs[m], taken)
        taken.add(title)
        titles.append(f"{title} ({years[m]})")

    taste = _user_tastes(rng, config)
    bias = rng.normal(0.0, config.user_bias_sd, size=n_users)
    affinity = taste @ (attrs - attrs.mean(axis=0)).T  # (U, M)
    log_pop = np.log(popularity)
    extra = config.ratings_per_user_mean - config.ratings_per_user_min
    scale = extra / np.exp(config.activity_sigma**2 / 2)
    counts = config.ratings_per_user_min + np.round(
        rng.lognormal(np.log(max(scale, 1e-9)), config.activity_sigma, n_users)
    )
    counts = np.minimum(counts.astype(np.int64), n_movies // 2)
    half_star = rng.random(n_users) < config.half_star_fraction
    t0, t1 = _timestamp(config.rating_years[0]), _timestamp(config.rating_years[1] + 1) - 1
    release_sorted = np.sort(release)

    rows_u, rows_m, rows_r, rows_t = [], [], [], []
    for u in range(n_users):
        n = int(counts[u])
        start = int(rng.integers(t0, t1 + 1))
        end = min(max(start + int(rng.exponential(200 * 86400)), int(release_sorted[min(2 * n, n_movies) - 1])), t1)
        logits = np.where(release <= end, log_pop + config.taste_selection * affinity[u], -np.inf)
        keys = logits + rng.gumbel(size=n_movies)
        chosen = np.argpartition(-keys, n - 1)[:n]  # sampling without replacement, weights exp(logits)
        chosen = chosen[np.argsort(years[chosen] + rng.uniform(0, 15, size=n), kind="stable")]  # older first
        times = np.maximum(np.sort(rng.integers(start, end + 1, size=n)), release[chosen])
        raw = config.rating_base + bias[u] + quality[chosen] + config.taste_scale * affinity[u, chosen]
        raw = raw + rng.normal(0.0, config.rating_noise, size=n)
        stars = np.clip(np.round(raw * 2) / 2, 0.5, 5.0) if half_star[u] else np.clip(np.round(raw), 1.0, 5.0)
        rows_u.append(np.full(n, u + 1))
        rows_m.append(movie_ids[chosen])
        rows_r.append(stars)
        rows_t.append(np.maximum.accumulate(times))
    ratings = np.zeros(
        int(counts.sum()),
        dtype=[("userId", np.int64), ("movieId", np.int64), ("rating", np.float64), ("timestamp", np.int64)],
    )
    ratings["userId"], ratings["movieId"] = np.concatenate(rows_u), np.concatenate(rows_m)
    ratings["rating"], ratings["timestamp"] = np.concatenate(rows_r), np.concatenate(rows_t)
    ratings = ratings[np.lexsort((ratings["movieId"], ratings["userId"]))]

    tags = _tags(rng, config, attrs, movie_ids, ratings, t1)
    return SyntheticCatalogue(
        config=config,
        movie_ids=movie_ids,
        titles=titles,
        genres=genres,
        plots=plots,
        years=years,
        movie_attributes=attrs.astype(np.float32),
        movie_quality=quality.astype(np.float32),
        movie_popularity=popularity.astype(np.float32),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        user_taste=taste.astype(np.float32),
        user_bias=bias.astype(np.float32),
        ratings=ratings,
        tags=tags,
    )


def _tags(
    rng: np.random.Generator,
    config: SyntheticConfig,
    attrs: np.ndarray,
    movie_ids: np.ndarray,
    ratings: np.ndarray,
    t_max: int,
) -> list[tuple[int, int, str, int]]:
    """Some users tag movies they rated, mostly with a word for one of the movie's strong attributes."""
    names = config.attributes
    row_of = {int(m): i for i, m in enumerate(movie_ids)}
    user_starts = np.searchsorted(ratings["userId"], np.arange(1, config.n_users + 2))
    styles = (str.lower, str.title, _cap, str.upper)
    out = []
    for u in np.flatnonzero(rng.random(config.n_users) < config.tagger_fraction):
        rated = ratings[user_starts[u] : user_starts[u + 1]]
        rows = np.array([row_of[int(m)] for m in rated["movieId"]])
        weight = attrs[rows].max(axis=1) ** 2
        style = styles[int(rng.choice(4, p=[0.6, 0.25, 0.1, 0.05]))]
        seen = set()
        for i in rng.choice(len(rated), size=int(rng.geometric(1 / config.tags_per_tagger)), p=weight / weight.sum()):
            draw = rng.random()
            if draw < config.other_tag_rate:
                text = _pick(rng, _OTHER_TAGS)
            else:
                if draw < config.other_tag_rate + config.tag_noise:
                    a = int(rng.integers(len(names)))
                else:
                    p = attrs[rows[i]] ** 3
                    a = int(rng.choice(len(names), p=p / p.sum()))
                variants = TAG_VARIANTS[names[a]]
                text = variants[0] if rng.random() < 0.5 else _pick(rng, variants[1:])
            text = style(text)
            movie = int(rated["movieId"][i])
            if (movie, text) in seen:
                continue
            seen.add((movie, text))
            out.append(
                (int(u + 1), movie, text, min(int(rated["timestamp"][i]) + int(rng.integers(0, 3 * 86400)), t_max))
            )
    out.sort(key=lambda t: (t[0], t[1], t[3], t[2]))
    return out


def _write_csv(path: pathlib.Path, header: tuple[str, ...], rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_npz(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so the same arrays give the same bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)


def _readme(cat: SyntheticCatalogue) -> str:
    c = cat.config
    return (
        "SYNTHETIC DATA. Generated by elm_jax (elm_jax/data/synthetic.py) from seed "
        f"{c.seed}.\nThese are not real movies, real people or real ratings: titles, plots, users, ratings and tags\n"
        "are all invented by a random generative model, laid out like MovieLens ml-25m so the same pipeline runs.\n\n"
        f"movies: {len(cat.movie_ids)}  users: {len(cat.user_ids)}  "
        f"ratings: {len(cat.ratings)}  tags: {len(cat.tags)}\n\n"
        "Files: movies.csv (movieId,title,genres), ratings.csv (userId,movieId,rating,timestamp),\n"
        "tags.csv (userId,movieId,tag,timestamp), plots.csv (movieId,plot), ground_truth.npz.\n\n"
        "Rating model: stars = round(rating_base + user_bias + movie_quality\n"
        "                            + taste_scale * user_taste . (movie_attributes - mean attributes) + noise).\n"
        "ground_truth.npz holds attributes, movie_ids, movie_attributes, movie_quality, movie_popularity,\n"
        "user_ids, user_taste, user_bias (load with elm_jax.data.synthetic.load_ground_truth).\n\n"
        f"config: {json.dumps(dataclasses.asdict(c), sort_keys=True)}\n"
    )


def write_catalogue(out_dir: str | os.PathLike, config: SyntheticConfig | None = None) -> pathlib.Path:
    """Generates the catalogue and writes it in the MovieLens ml-25m layout, all or nothing.

    Files are built in a temporary folder beside `out_dir` and renamed into place at the end, so a crash
    leaves no half-written catalogue; an existing `out_dir` is replaced.
    """
    cat = generate(config)
    out = pathlib.Path(out_dir)
    with atomic_dir(out) as tmp:
        ids = cat.movie_ids.tolist()
        _write_csv(
            tmp / "movies.csv", ("movieId", "title", "genres"), zip(ids, cat.titles, ("|".join(g) for g in cat.genres))
        )
        r = cat.ratings
        rating_text = [f"{x:.1f}" for x in r["rating"].tolist()]
        _write_csv(
            tmp / "ratings.csv",
            ("userId", "movieId", "rating", "timestamp"),
            zip(r["userId"].tolist(), r["movieId"].tolist(), rating_text, r["timestamp"].tolist()),
        )
        _write_csv(tmp / "tags.csv", ("userId", "movieId", "tag", "timestamp"), cat.tags)
        _write_csv(tmp / "plots.csv", ("movieId", "plot"), zip(ids, cat.plots))
        _write_npz(tmp / "ground_truth.npz", cat.ground_truth())
        (tmp / "README.txt").write_text(_readme(cat), encoding="utf-8")
    return out


def load_ground_truth(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """The hidden truth of a written catalogue (attributes, tastes, quality) for evaluation."""
    with np.load(pathlib.Path(directory) / "ground_truth.npz", allow_pickle=False) as f:
        return {key: f[key] for key in f.files}
