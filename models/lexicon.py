"""The words refind's query parser knows (``refind.models.language``), by what they say.

Kept apart from the parser so the vocabulary can be read, extended and reviewed on its own. A
word outside these lists is not lost: the parser maps it onto the nearest of them with MiniLM
(``ConceptMap``) where it can, and reports it as not understood otherwise.
"""

from __future__ import annotations

from refind.models.colours import canonical_colour

GARMENT_PART: dict[str, str] = {
    **dict.fromkeys((
        "top", "shirt", "t-shirt", "tshirt", "tee", "jacket", "coat", "sweater", "jumper",
        "hoodie", "blouse", "pullover", "cardigan", "vest", "sweatshirt", "parka", "anorak",
        "fleece", "raincoat", "overcoat", "gilet", "windbreaker", "suit", "uniform", "dress",
        "tunic", "upper", "tank", "polo", "mac", "trenchcoat", "blazer", "puffer",
    ), "top"),
    **dict.fromkeys((
        "trousers", "pants", "jeans", "shorts", "skirt", "bottoms", "leggings", "slacks", "chinos",
        "joggers", "tracksuit", "khakis", "cargos", "lower", "legs",
    ), "bottom"),
    **dict.fromkeys(("shoes", "trainers", "sneakers", "boots", "shoe", "footwear", "sandals"),
                    "shoes"),
    **dict.fromkeys(("hair", "haired"), "hair"),
    **dict.fromkeys(("hat", "cap", "beanie", "helmet", "headscarf", "hijab", "hood"), "head"),
}
CARRIED_WORDS = ("paper", "papers", "sheet", "folder", "bag", "bags", "carrier", "box", "package",
                 "parcel", "file", "document", "documents", "envelope", "cup", "bottle", "phone",
                 "handbag", "purse", "briefcase", "satchel", "tote", "shoulderbag", "backpack",
                 "backpacks", "rucksack", "knapsack")
# word -> (attribute, value)
ATTRIBUTE_WORDS: dict[str, tuple[str, bool]] = {
    **dict.fromkeys(("man", "male", "guy", "gentleman", "men", "he", "his", "him", "bloke",
                     "gentlemen", "guys", "lad", "sir"), ("is_male", True)),
    **dict.fromkeys(("woman", "female", "lady", "women", "she", "her", "ladies", "girl", "madam"),
                    ("is_male", False)),
    **dict.fromkeys(("backpack", "rucksack", "knapsack", "backpacks"), ("has_backpack", True)),
    **dict.fromkeys(("bag", "handbag", "purse", "briefcase", "satchel", "bags", "tote",
                     "shoulderbag"), ("has_bag", True)),
    **dict.fromkeys(("hat", "cap", "beanie", "helmet"), ("has_hat", True)),
    **dict.fromkeys(("bald", "shaved"), ("bald", True)),
    **dict.fromkeys(("blonde", "blond", "fair-haired", "light-haired", "grey-haired", "fair",
                     "white-haired", "silver-haired"), ("light_hair", True)),
    **dict.fromkeys(("dark-haired", "brunette", "black-haired", "brown-haired"),
                    ("dark_hair", True)),
    "sleeveless": ("has_longsleeves", False),
    "long-haired": ("has_longhair", True), "short-haired": ("has_longhair", False),
    "long-sleeved": ("has_longsleeves", True), "short-sleeved": ("has_longsleeves", False),
}
PHRASE_ATTRIBUTES: dict[str, tuple[str, bool]] = {
    "long hair": ("has_longhair", True), "short hair": ("has_longhair", False),
    "long sleeves": ("has_longsleeves", True), "short sleeves": ("has_longsleeves", False),
    "on their back": ("has_backpack", True), "on his back": ("has_backpack", True),
    "on her back": ("has_backpack", True), "light hair": ("light_hair", True),
    "dark hair": ("dark_hair", True), "fair hair": ("light_hair", True),
    "blond hair": ("light_hair", True), "blonde hair": ("light_hair", True),
    "grey hair": ("light_hair", True), "white hair": ("light_hair", True),
    "black hair": ("dark_hair", True), "brown hair": ("dark_hair", True),
    "light haired": ("light_hair", True), "fair haired": ("light_hair", True),
    "grey haired": ("light_hair", True), "white haired": ("light_hair", True),
    "dark haired": ("dark_hair", True), "black haired": ("dark_hair", True),
}  # fmt: skip
SHADES = {"dark": "dark", "light": "light", "bright": "bright", "pale": "light", "deep": "dark",
          "navy": "dark"}
MOTION_VERBS = {
    "walking", "walk", "walks", "walked", "heading", "heads", "head", "moving", "moves", "move",
    "going", "goes", "go", "coming", "comes", "come", "crossing", "crosses", "strolling",
    "strolls", "running", "runs", "jogging", "jogs", "hurrying", "hurries", "stepping",
    "travelling", "traveling", "approaching", "approaches", "leaving", "leaves", "entering",
    "enters", "passing", "passes", "wandering", "wanders", "pacing", "marching", "striding",
    "rushing", "dashing", "sprinting", "making", "returning", "returns",
}  # fmt: skip
STILL_WORDS = {"standing", "stands", "stood", "still", "stationary", "waiting", "waits",
               "stopped", "idle", "loitering", "lingering", "motionless", "static", "paused",
               "pausing", "stopping", "stays", "staying", "immobile"}
FAST_WORDS = {"running", "runs", "jogging", "jogs", "hurrying", "hurries", "briskly", "fast",
              "quickly", "rushing", "dashing", "sprinting", "racing", "hastily", "rapidly"}
TOWARDS_WORDS = {"towards", "toward", "approaching", "approaches", "down"}
AWAY_WORDS = {"away", "up"}
CAMERA_WORDS = {"camera", "us", "viewer", "lens", "foreground"}
PLURAL_WORDS = {"people", "persons", "men", "women", "everyone", "everybody", "all", "both",
                "they", "them", "ones", "guys", "ladies", "those"}
TOGETHER_WORDS = {"together", "side-by-side", "group", "grouped", "clustered", "pair", "couple",
                  "beside", "alongside", "accompanied"}
NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "both": 2, "pair": 2,
           "couple": 2}
NEGATIONS = {"no", "not", "without", "never", "nor", "lacking", "isn't", "non", "except"}
STOPWORDS = {
    "a", "an", "the", "in", "on", "of", "with", "and", "or", "to", "who", "whom", "is", "are",
    "was", "were", "be", "been", "that", "which", "one", "person", "someone", "somebody",
    "anyone", "anybody", "individual", "figure", "pedestrian", "at", "by", "from", "into", "onto",
    "their", "there", "this", "these", "it", "its", "as", "for", "wearing", "wears", "dressed",
    "clothed", "clad", "has", "have", "having", "carrying", "carries", "holding", "holds",
    "just", "very", "quite", "fairly", "rather", "also", "some", "something", "thing", "while",
    "then", "over", "across", "along", "through", "around", "out", "off", "shows",
    "seen", "visible", "frame", "picture", "image", "scene", "view", "shot", "side", "edge",
    "part", "area", "half", "corner", "most", "only", "other", "another", "any", "can", "who's",
    "whose", "i", "me", "my", "find", "show", "look", "looking", "like", "kind", "type",
    "sort", "clothes", "clothing", "outfit", "colour", "color", "coloured", "colored", "tone",
    "two-tone", "plain", "mostly", "mainly", "partly", "all", "completely", "entirely",
    "totally", "head", "toe", "full", "wore", "worn", "sporting",
}  # fmt: skip
POSITION_WORDS = {"left", "right", "leftmost", "rightmost", "middle", "centre", "center",
                   "central", "closest", "nearest", "close", "near", "front", "furthest",
                   "farthest", "far", "distance", "distant", "back", "background", "top",
                   "bottom", "upper", "lower", "towards", "toward", "away", "up", "down",
                   "foreground", "behind"}
# a person partly out of sight: "hidden behind the sign", "half obscured"; "behind" a part of the
# scene says the same ("passing behind the lamp post": the post hides part of them)
HIDDEN_WORDS = {"hidden", "obscured", "occluded", "blocked", "concealed", "obstructed"}
# "fully visible" is not hidden; "partly visible" is (read only before "visible")
PARTLY = {"partly", "partially", "half", "barely", "hardly"}
WHOLLY = {"fully", "clearly", "completely", "entirely", "wholly"}
INTENSIFIED = {"next", "behind", "beside", "by", "in", "at", "there", "past", "up", "under",
                "above", "below", "near"}
FRAME_WORDS = ("picture", "frame", "image", "screen", "view")
GLUE = {"than", "whose", "where", "when", "s", "hand", "hands", "dark", "light", "long",
         "short", "sleeves", "sleeved", "hi-vis", "high-visibility", "back", "next", "between"}

PERSON_WORDS = {"person", "someone", "somebody", "one", "man", "woman", "guy", "lady", "people",
                "men", "women", "individual", "pedestrian", "figure", "anyone", "everyone",
                "gentleman", "girl", "boy", "child", "he", "she", "who"}
# what a carried or worn thing's region is taken to be: a bag or backpack on the torso
PART_OF_THING = {"backpack": "top", "rucksack": "top", "knapsack": "top", "bag": "top",
                  "handbag": "top", "purse": "top", "satchel": "top", "briefcase": "top",
                  "hat": "head", "cap": "head", "beanie": "head", "helmet": "head"}

HAVING = {"with", "carrying", "holding", "walking", "pushing", "pulling", "riding", "in",
           "wearing", "using", "leading", "has", "having", "carries", "holds", "rides",
           "pushes", "sitting", "lying", "kneeling", "playing", "eating", "drinking",
           "smoking"}
# parts of a scene, not of a person: a text may place someone by them ("walking on the grass",
# "behind the lamp post"); refind has no model of the scene, so they are reported as ignored
# and never required of the person
SCENE_WORDS = {"grass", "lawn", "road", "street", "pavement", "sidewalk", "path", "pathway",
               "footpath", "crossing", "crosswalk", "kerb", "curb", "sign", "signpost", "lamp",
               "lamppost", "post", "pole", "cone", "cones", "van", "vans", "car", "cars",
               "building", "buildings", "door", "doorway", "gate", "entrance", "fence", "wall",
               "tree", "trees", "bench", "bush", "bushes", "hedge", "parking",
               "corner", "square", "steps", "stairs", "bridge", "field", "park", "shop",
               "window", "platform", "lane", "ground", "floor"}
# the ground a person stands on, by its colour: "walking on the grass" is read from the pixels
# around their feet that are not theirs (``refind.models.body.ground_colours``)
GROUND_COLOUR = {**dict.fromkeys(("grass", "lawn", "field", "meadow", "turf"), "green"),
                 **dict.fromkeys(("road", "street", "tarmac", "asphalt"), "grey")}
ON_GROUND = {"on", "onto", "across", "over", "along", "crossing", "crosses", "cross"}
# what a person may be doing that no model here sees: a text that asks for it is asked of
# everyone as unknown (a prior), never ignored into a match on the rest
POSTURE_WORDS = {"sitting", "seated", "sits", "lying", "lies", "laying", "kneeling", "kneels",
                 "crouching", "crouched", "squatting", "crawling", "cycling", "biking",
                 "skating", "skateboarding", "dancing", "fighting", "falling", "fallen",
                 "climbing", "jumping", "sleeping", "begging", "smoking", "eating",
                 "drinking", "phoning", "texting"}
PLACES = {"near", "behind", "beside", "of", "at", "by", "around", "along", "past", "across",
           "next", "front", "between", "towards", "toward", "from", "to", "under", "above",
           "below", "over", "against", "into", "onto", "than", "up", "down", "through"}


def known(word: str) -> bool:
    """Is ``word`` in the lexicon (or a colour, or a clause break)?"""
    return (word == "," or word in STOPWORDS or word in GARMENT_PART or word in ATTRIBUTE_WORDS
            or word in CARRIED_WORDS or word in MOTION_VERBS or word in STILL_WORDS
            or word in FAST_WORDS or word in NUMBERS or word in NEGATIONS or word in SHADES
            or word in PLURAL_WORDS or word in TOGETHER_WORDS or word in POSITION_WORDS
            or word in CAMERA_WORDS or canonical_colour(word) is not None
            or word in HIDDEN_WORDS
            or word in GLUE)


# entering and leaving the view, and the edges they happen at
ENTER_VERBS = {"enters", "enter", "entering", "entered", "appears", "appear", "appearing",
               "appeared", "arrives", "arrive", "arriving", "arrived", "emerges", "emerging"}
EXIT_VERBS = {"leaves", "leave", "leaving", "exits", "exit", "exiting", "exited", "disappears",
              "disappear", "disappearing", "disappeared", "departs", "departing", "vanishes"}
IN_OUT = {"in": "enter", "into": "enter", "out": "exit", "off": "exit"}  # "comes in", "walks out"
EDGE_SIDES = {"left": "left", "right": "right", "top": "top", "bottom": "bottom"}
