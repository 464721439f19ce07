"""Synthetic memories: what an agent might learn about a user, from templates.

Each template is a statement (the memory) and a question a user would ask to
get it back, sharing slots filled from word lists: enough combinations that a
user with a hundred thousand memories still has distinct texts, and wording
varied enough that their vectors differ. Everything is drawn from a
random.Random seeded by the caller, so the same seed gives the same texts.
Used by memories.generate (the data generator) and bench/recall.py (queries).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from memories.models import MemoryKind

NAMES = (
    "Anna", "Ben", "Carla", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kemal", "Lena",
    "Marco", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tara", "Umar", "Vera", "Wei", "Ximena",
    "Yusuf", "Zoe", "Amir", "Bea", "Chen", "Dario", "Emma", "Felix", "Gita", "Hugo", "Ida", "Jamal", "Kira",
    "Luca", "Maya", "Noah", "Olga", "Pablo", "Rina", "Sam", "Theo", "Uma", "Viktor", "Wanda", "Yara", "Zane",
)  # fmt: skip
RELATIVES = (
    "sister", "brother", "mother", "father", "daughter", "son", "cousin", "aunt", "uncle", "grandmother",
    "grandfather", "niece", "nephew", "wife", "husband", "partner", "best friend", "neighbour", "colleague",
    "flatmate",
)  # fmt: skip
CITIES = (
    "Berlin", "Lisbon", "Madrid", "Paris", "Vienna", "Prague", "Warsaw", "Dublin", "Oslo", "Helsinki",
    "Athens", "Rome", "Milan", "Naples", "Zurich", "Geneva", "Amsterdam", "Rotterdam", "Brussels", "Lyon",
    "Marseille", "Seville", "Porto", "Krakow", "Budapest", "Tallinn", "Riga", "Copenhagen", "Stockholm",
    "Edinburgh", "Manchester", "Toronto", "Montreal", "Boston", "Chicago", "Denver", "Seattle", "Austin",
    "Mexico City", "Bogota", "Lima", "Santiago", "Buenos Aires", "Cape Town", "Nairobi", "Cairo", "Istanbul",
    "Dubai", "Mumbai", "Bangalore", "Singapore", "Bangkok", "Hanoi", "Seoul", "Tokyo", "Osaka", "Kyoto",
    "Sydney", "Melbourne", "Auckland",
)  # fmt: skip
COUNTRIES = (
    "Portugal", "Spain", "Italy", "Greece", "Norway", "Iceland", "Japan", "Vietnam", "Thailand", "Peru",
    "Chile", "Argentina", "Mexico", "Canada", "Morocco", "Kenya", "Turkey", "India", "Indonesia", "New Zealand",
    "Scotland", "Ireland", "Croatia", "Georgia", "Jordan", "Egypt", "Colombia", "Costa Rica", "Cuba", "Nepal",
)  # fmt: skip
JOBS = (
    "nurse", "teacher", "software engineer", "data analyst", "architect", "accountant", "chef", "pharmacist",
    "lawyer", "graphic designer", "electrician", "physiotherapist", "journalist", "product manager",
    "veterinarian", "pilot", "civil engineer", "dentist", "librarian", "photographer", "firefighter",
    "social worker", "barista", "translator", "marine biologist", "carpenter", "paramedic", "economist",
    "UX researcher", "high school principal",
)  # fmt: skip
COMPANIES = (
    "a small bakery", "a hospital", "a bank", "a logistics startup", "the city council", "a law firm",
    "a video game studio", "a university", "an airline", "a solar energy company", "a newspaper", "a museum",
    "a car maker", "a public school", "a consulting firm", "an insurance company", "a hotel chain",
    "a pharmaceutical company", "a non-profit", "a supermarket chain",
)  # fmt: skip
FOODS = (
    "sushi", "ramen", "pad thai", "lasagne", "tacos", "falafel", "paella", "pho", "dumplings", "risotto",
    "pizza margherita", "butter chicken", "shakshuka", "moussaka", "ceviche", "bibimbap", "goulash",
    "fish and chips", "pierogi", "gnocchi", "croissants", "pancakes", "dark chocolate", "cheesecake",
    "tiramisu", "miso soup", "lentil curry", "greek salad", "burritos", "kimchi fried rice",
)  # fmt: skip
CUISINES = (
    "Italian", "Japanese", "Thai", "Mexican", "Indian", "Lebanese", "Ethiopian", "Korean", "Vietnamese",
    "Greek", "Peruvian", "Turkish", "Spanish", "French", "Georgian", "Moroccan", "Chinese", "Brazilian",
)  # fmt: skip
DRINKS = (
    "black coffee", "flat white", "green tea", "chai latte", "oat milk cappuccino", "espresso", "herbal tea",
    "sparkling water", "orange juice", "matcha", "hot chocolate", "iced americano", "red wine", "craft beer",
    "kombucha", "earl grey",
)  # fmt: skip
DIETS = (
    "vegetarian", "vegan", "pescatarian", "gluten-free", "lactose-free", "low-carb", "halal", "kosher",
    "on a low-sodium diet", "avoiding sugar",
)  # fmt: skip
ALLERGIES = (
    "peanuts", "shellfish", "cats", "pollen", "penicillin", "dust mites", "eggs", "soy", "bee stings",
    "latex", "tree nuts", "sesame",
)  # fmt: skip
HOBBIES = (
    "rock climbing", "pottery", "birdwatching", "chess", "knitting", "sourdough baking", "trail running",
    "woodworking", "gardening", "salsa dancing", "photography", "painting watercolours", "kayaking",
    "board games", "calligraphy", "scuba diving", "yoga", "astronomy", "skateboarding", "fishing",
    "crossword puzzles", "stand-up comedy", "origami", "cycling", "bouldering",
)  # fmt: skip
INSTRUMENTS = ("piano", "guitar", "violin", "cello", "drums", "saxophone", "ukulele", "flute", "bass", "trumpet")
SPORTS = (
    "football", "tennis", "basketball", "swimming", "volleyball", "badminton", "rugby", "golf", "handball",
    "table tennis", "ice hockey", "cricket", "baseball", "squash", "water polo",
)  # fmt: skip
TEAMS = (
    "the local football club", "the national team", "the city basketball team", "a rugby club",
    "the university rowing crew", "the hockey team", "a baseball team", "a cricket club",
)  # fmt: skip
GENRES = (
    "jazz", "techno", "classical music", "hip hop", "folk", "heavy metal", "bossa nova", "k-pop", "blues",
    "reggae", "indie rock", "opera", "country music", "flamenco", "afrobeat", "synthwave",
)  # fmt: skip
ARTISTS = (
    "Nina Simone", "Radiohead", "Miles Davis", "Beyonce", "Bach", "Fela Kuti", "Bjork", "Kendrick Lamar",
    "Joni Mitchell", "Daft Punk", "Rosalia", "Leonard Cohen", "Ryuichi Sakamoto", "Adele", "Bob Marley",
    "Taylor Swift", "Chopin", "Metallica", "Stevie Wonder", "Aretha Franklin",
)  # fmt: skip
BOOKS = (
    "Dune", "War and Peace", "Pride and Prejudice", "One Hundred Years of Solitude", "The Hobbit",
    "Beloved", "The Remains of the Day", "Norwegian Wood", "Middlemarch", "The Left Hand of Darkness",
    "Sapiens", "Thinking, Fast and Slow", "The Name of the Rose", "Anna Karenina", "The Overstory",
    "Project Hail Mary", "Circe", "The Three-Body Problem", "Moby-Dick", "Things Fall Apart",
)  # fmt: skip
LANGUAGES = (
    "Spanish", "Japanese", "German", "Portuguese", "Korean", "Mandarin", "Arabic", "Italian", "French",
    "Swahili", "Dutch", "Greek", "Turkish", "Hindi", "Polish", "Norwegian",
)  # fmt: skip
PETS = ("dog", "cat", "rabbit", "parrot", "hamster", "tortoise", "goldfish", "guinea pig", "ferret", "horse")
PET_NAMES = (
    "Miso", "Biscuit", "Luna", "Pepper", "Rex", "Olive", "Mango", "Noodle", "Ziggy", "Pixel", "Clementine",
    "Waffles", "Juniper", "Toast", "Bruno", "Hazel", "Sushi", "Pickle", "Ginger", "Nacho",
)  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
)  # fmt: skip
TIMES = ("6:30", "7:00", "7:45", "8:15", "9:00", "10:30", "12:00", "13:15", "15:00", "17:30", "18:45", "20:00")
EVENTS = (
    "a dentist appointment", "a job interview", "a wedding", "a concert", "a job review", "a marathon",
    "a birthday party", "a doctor's check-up", "a parent-teacher meeting", "a flight", "a house viewing",
    "a driving test", "a conference talk", "a yoga retreat", "a court hearing", "a school reunion",
    "an exam", "a piano recital", "a team offsite", "a hospital visit",
)  # fmt: skip
PLACES = (
    "the farmers market", "the gym", "the public library", "the new ramen bar", "the climbing hall",
    "the botanical garden", "the science museum", "the beach", "the cinema", "the jazz club",
    "the old town", "a mountain hut", "the lake", "the football stadium", "a night market",
    "the art gallery", "a vineyard", "the zoo", "the aquarium", "a street food festival",
)  # fmt: skip
VEHICLES = (
    "an electric bike", "a used Volvo", "a cargo bike", "a Vespa", "a camper van", "a Toyota Prius",
    "a Tesla Model 3", "a vintage Beetle", "a road bike", "a Fiat 500",
)  # fmt: skip
DEVICES = (
    "an iPhone", "an Android phone", "a Kindle", "a MacBook", "a Linux laptop", "an iPad", "a Pixel phone",
    "a Windows desktop", "a Steam Deck", "a smartwatch",
)  # fmt: skip
APPS = (
    "Signal", "WhatsApp", "Notion", "Spotify", "Duolingo", "Strava", "Google Calendar", "Slack",
    "Todoist", "Obsidian", "Telegram", "Apple Notes",
)  # fmt: skip
COLOURS = ("green", "navy blue", "burgundy", "yellow", "teal", "black", "white", "orange", "lavender", "grey")
SEATS = ("window seat", "aisle seat", "seat near the exit", "front row seat", "seat at the back")
GOALS = (
    "run a half marathon", "save for a flat", "learn to swim", "read fifty books", "get a promotion",
    "cycle across the Alps", "write a novel", "lose ten kilos", "learn to code", "visit every continent",
    "sleep eight hours a night", "pay off the student loan", "start a small business", "learn to cook",
)  # fmt: skip
CONDITIONS = (
    "asthma", "migraines", "type 1 diabetes", "high blood pressure", "a bad knee", "back pain",
    "insomnia", "hay fever", "a heart murmur", "tinnitus",
)  # fmt: skip
SHOWS = (
    "Breaking Bad", "The Office", "Succession", "Dark", "The Crown", "Severance", "Fleabag", "The Wire",
    "Shogun", "The Bear", "Twin Peaks", "Planet Earth",
)  # fmt: skip


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


SLOTS: dict[str, tuple[str, ...]] = {
    "name": NAMES,
    "name2": NAMES,
    "relative": RELATIVES,
    "city": CITIES,
    "city2": CITIES,
    "country": COUNTRIES,
    "job": JOBS,
    "company": COMPANIES,
    "food": FOODS,
    "food2": FOODS,
    "cuisine": CUISINES,
    "drink": DRINKS,
    "diet": DIETS,
    "allergy": ALLERGIES,
    "hobby": HOBBIES,
    "instrument": INSTRUMENTS,
    "sport": SPORTS,
    "team": TEAMS,
    "genre": GENRES,
    "artist": ARTISTS,
    "book": BOOKS,
    "language": LANGUAGES,
    "pet": PETS,
    "pet_name": PET_NAMES,
    "weekday": WEEKDAYS,
    "month": MONTHS,
    "time": TIMES,
    "event": EVENTS,
    "place": PLACES,
    "vehicle": VEHICLES,
    "device": DEVICES,
    "app": APPS,
    "colour": COLOURS,
    "seat": SEATS,
    "goal": GOALS,
    "condition": CONDITIONS,
    "show": SHOWS,
    "age": tuple(str(n) for n in range(3, 90)),
    "count": tuple(str(n) for n in range(2, 13)),
    "year": tuple(str(n) for n in range(1995, 2026)),
    "minutes": tuple(str(n) for n in range(10, 95, 5)),
    "amount": tuple(str(n) for n in range(20, 2001, 20)),
    "floor": tuple(str(n) for n in range(1, 25)),
    "day": tuple(_ordinal(n) for n in range(1, 29)),
}


@dataclass(frozen=True)
class Template:
    kind: str
    category: str
    # The memory in a few wordings, each with the same {slot} fields from SLOTS
    # (several wordings: memories of one kind are not all one sentence).
    texts: tuple[str, ...]
    # How a user would ask for it; only slots every wording has.
    question: str
    tags: tuple[str, ...]
    # Profile facts have an upsert key (with the category): at most one per user.
    key: str | None = None


F, P, E = MemoryKind.FACT, MemoryKind.PREFERENCE, MemoryKind.EVENT

TEMPLATES: tuple[Template, ...] = (
    # Profile facts: keyed, so each appears at most once per user.
    Template(F, "profile", ("I live in {city} and have been there since {year}",
                            "Home is {city}; I moved there in {year}",
                            "Been living in {city} since {year}"),
             "Which city do I live in?", ("home",), key="home_city"),
    Template(F, "profile", ("I work as a {job} at {company}", "My job: {job} at {company}",
                            "I am a {job} and work for {company}"),
             "What is my job?", ("work",), key="job"),
    Template(F, "profile", ("I have been {diet} since {year}", "I am {diet}, ever since {year}",
                            "Since {year} I eat {diet}"),
             "Do I have any dietary restrictions?", ("food", "health"), key="diet"),
    Template(F, "profile", ("My native language is {language}; I grew up in {city}",
                            "I grew up in {city} speaking {language}",
                            "{language} is my first language, from my childhood in {city}"),
             "What is my first language?", ("language",), key="native_language"),
    Template(F, "profile", ("My birthday is on the {day} of {month}", "I was born on the {day} of {month}",
                            "Birthday: {month} {day}"),
             "When is my birthday?", ("dates",), key="birthday"),
    Template(F, "profile", ("My favourite colour is {colour}, my {relative}'s is {colour}",
                            "I love the colour {colour}; my {relative} prefers {colour}",
                            "{colour} is my colour, {colour} is my {relative}'s"),
             "What colour do I like best?", ("personal",), key="favourite_colour"),
    # Family and friends.
    Template(F, "family", ("My {relative} {name} lives in {city}", "{name}, my {relative}, is based in {city}",
                           "My {relative} {name} moved to {city} a while ago"),
             "Where does my {relative} {name} live?", ("family",)),
    Template(F, "family", ("My {relative} {name} works as a {job}", "{name} (my {relative}) is a {job}",
                           "My {relative} {name} just started a new job as a {job}"),
             "What does {name} do for a living?", ("family", "work")),
    Template(F, "family", ("My {relative} {name} turns {age} in {month}",
                           "{name}, my {relative}, will be {age} this {month}",
                           "In {month} my {relative} {name} has their {age}th birthday"),
             "How old is my {relative} {name}?", ("family", "dates")),
    Template(F, "family", ("{name} is my {relative} and is allergic to {allergy}",
                           "My {relative} {name} reacts badly to {allergy}",
                           "Careful with {allergy} around my {relative} {name}"),
             "What is {name} allergic to?", ("family", "health")),
    Template(F, "family", ("My {relative} {name} is learning the {instrument}",
                           "{name}, my {relative}, takes {instrument} lessons on {weekday}",
                           "My {relative} {name} practises the {instrument} every evening"),
             "Which instrument is {name} learning?", ("family", "music")),
    Template(F, "family", ("My {relative} {name} plays {sport} every {weekday}",
                           "{name} (my {relative}) has {sport} training on {weekday}",
                           "On {weekday} I drive my {relative} {name} to {sport}"),
             "What sport does my {relative} play?", ("family", "sports")),
    Template(F, "friends", ("My friend {name} just moved from {city} to {city2}",
                            "{name} left {city} and now lives in {city2}",
                            "{name} relocated to {city2}; we met back in {city}"),
             "Where did {name} move to?", ("friends",)),
    Template(F, "friends", ("{name} and {name2} are my oldest friends from {city}",
                            "I have known {name} and {name2} since school in {city}",
                            "My best friends {name} and {name2} still live in {city}"),
             "Who are my oldest friends?", ("friends",)),
    Template(P, "friends", ("{name} prefers a phone call to a message on {app}",
                            "Call {name} instead of texting on {app}; they never read it",
                            "{name} hates {app} messages, phone them"),
             "How should I contact {name}?", ("friends", "communication")),
    # Work.
    Template(F, "work", ("My manager {name} expects the {month} report before {weekday}",
                         "The {month} report is due to {name} by {weekday}",
                         "{name}, my boss, wants the {month} numbers on {weekday}"),
             "When is the report for {name} due?", ("work", "deadline")),
    Template(F, "work", ("I commute {minutes} minutes to the office by {vehicle}",
                         "My way to work takes {minutes} minutes on {vehicle}",
                         "Going to the office: {vehicle}, about {minutes} minutes from {city}"),
             "How long is my commute?", ("work", "commute")),
    Template(P, "work", ("I prefer meetings before {time} so my afternoons stay free",
                         "No meetings after {time} on {weekday}, please",
                         "Book my calls before {time}; {weekday} afternoons are for deep work"),
             "When do I like to have meetings?", ("work", "schedule")),
    Template(F, "work", ("My team uses {app} for planning and meets every {weekday} at {time}",
                         "Team sync is {weekday} {time}, planned in {app}",
                         "We plan in {app} and have a stand-up on {weekday} at {time}"),
             "When is my team meeting?", ("work", "schedule")),
    Template(F, "work", ("I am mentoring {name}, a junior {job} who started in {month}",
                         "Since {month} I mentor {name}, our new {job}",
                         "{name} joined as a {job} in {month} and I am their mentor"),
             "Who am I mentoring at work?", ("work",)),
    Template(E, "work", ("Gave a talk about my work as a {job} at a conference in {city}",
                         "Spoke at a {job} conference in {city} in {month}",
                         "My talk in {city} went well; about {count} hundred people came"),
             "Did I speak at a conference in {city}?", ("work", "travel")),
    # Food and drink.
    Template(P, "food", ("I love {food}, especially from the {cuisine} place near my flat",
                         "{food} from the little {cuisine} restaurant is my comfort food",
                         "Could eat {food} every day; best at the {cuisine} spot in {city}"),
             "What food do I love?", ("food",)),
    Template(P, "food", ("I dislike {food} and never order it", "Please never suggest {food} or {food}",
                         "{food} is the one dish I cannot stand, ever since {city}"),
             "Is there any food I avoid?", ("food",)),
    Template(P, "food", ("My usual order at the cafe is a {drink} and a slice of {food}",
                         "At the cafe I get a {drink} with {food}",
                         "Usual cafe order: {drink}, sometimes {food} on {weekday}"),
             "What do I usually order at the cafe?", ("food", "coffee")),
    Template(P, "food", ("I drink {drink} in the morning and {drink} at {time}",
                         "Mornings start with {drink}; by {time} I switch to {drink}",
                         "{drink} at breakfast, {drink} around {time}"),
             "What do I drink in the morning?", ("food", "routine")),
    Template(P, "food", ("When I cook for friends I make {cuisine} dishes like {food}",
                         "For guests I usually cook {cuisine}, often {food}",
                         "My dinner party dish is {food}, {cuisine} style, for {count} people"),
             "What do I cook for guests?", ("food", "cooking")),
    Template(E, "food", ("Tried {food} for the first time at {place} in {city}",
                         "Had my first {food} at {place}, {city}",
                         "First taste of {food}: {place} in {city}, with {name}"),
             "Where did I first try {food}?", ("food", "travel")),
    Template(F, "food", ("I am allergic to {allergy}, so restaurants must be told",
                         "Allergy: {allergy}; I carry an epipen since {year}",
                         "I react to {allergy}, found out in {year}"),
             "What am I allergic to?", ("health", "food")),
    # Travel.
    Template(P, "travel", ("I always book a {seat} when I fly", "{seat} please, on every flight to {city}",
                           "On planes I want a {seat}, especially on long flights to {country}"),
             "Where do I like to sit on planes?", ("travel", "flights")),
    Template(E, "travel", ("Spent {count} days in {country} in {month} {year}",
                           "Trip to {country}: {count} days in {month} {year}",
                           "Back from {count} days in {country} ({month} {year})"),
             "When did I visit {country}?", ("travel",)),
    Template(E, "travel", ("Booked a flight to {city} for {month}, leaving on a {weekday}",
                           "Flight to {city} booked: {weekday} in {month}, {time} departure",
                           "Flying to {city} in {month}, out on a {weekday}"),
             "When is my flight to {city}?", ("travel", "flights")),
    Template(P, "travel", ("I want to visit {country} and {city} before I turn {age}",
                           "Bucket list: {country}, and {city} before {age}",
                           "Dream trip: {country}, then {city}, before I am {age}"),
             "Where do I want to travel?", ("travel", "goals")),
    Template(F, "travel", ("My passport expires in {month} {year}", "Passport valid until {month} {year}",
                           "Need to renew my passport before {month} {year}, at the office in {city}"),
             "When does my passport expire?", ("travel", "documents")),
    Template(P, "travel", ("On trips I prefer small guesthouses over hotels, ideally near {place}",
                           "I avoid big hotels; a guesthouse near {place} in {city} is ideal",
                           "Book guesthouses, not hotels, close to {place}, for {count} nights max"),
             "What kind of accommodation do I like?", ("travel",)),
    # Health.
    Template(F, "health", ("I have {condition} and take medication every morning at {time}",
                           "Diagnosed with {condition} in {year}; pills at {time}",
                           "{condition}: medication daily at {time}"),
             "What health condition do I have?", ("health",)),
    Template(E, "health", ("Booked {event} for {weekday} at {time}", "{event} on {weekday}, {time}, in {city}",
                           "Reminder: {event} this {weekday} at {time}"),
             "When is my {event}?", ("health", "schedule")),
    Template(F, "health", ("My doctor in {city} is Dr. {name}", "Dr. {name} at the {city} clinic is my GP",
                           "I see Dr. {name} in {city} for {condition}"),
             "Who is my doctor?", ("health",)),
    Template(P, "health", ("I try to walk {count} thousand steps a day and do yoga on {weekday}",
                           "Goal: {count}k steps daily, yoga every {weekday}",
                           "{count} thousand steps a day, plus yoga on {weekday} at {time}"),
             "What is my exercise routine?", ("health", "fitness")),
    # Hobbies, music, books, shows.
    Template(P, "hobbies", ("My weekends are for {hobby}, usually with {name}",
                            "Saturdays I do {hobby} with {name}",
                            "{hobby} with {name} is how I spend most weekends"),
             "What do I do on weekends?", ("hobbies",)),
    Template(E, "hobbies", ("Started taking {hobby} classes in {city} this {month}",
                            "Signed up for {hobby} lessons in {city} in {month}",
                            "First {hobby} class in {city} on a {weekday} in {month}"),
             "When did I start {hobby}?", ("hobbies",)),
    Template(F, "hobbies", ("I have played the {instrument} since I was {age}",
                            "Been playing the {instrument} from age {age}",
                            "I play {instrument} in a band with {name}, since I was {age}"),
             "Which instrument do I play?", ("music", "hobbies")),
    Template(P, "music", ("I listen to {genre} when I work, mostly {artist}", "{artist} and other {genre} while I work",
                          "Work playlist: {genre}, lots of {artist}"),
             "What music do I work to?", ("music",)),
    Template(E, "music", ("Saw {artist} live in {city} in {year}", "{artist} concert in {city}, {year}, with {name}",
                          "Went to see {artist} play in {city} in {month} {year}"),
             "Have I seen {artist} in concert?", ("music", "events")),
    Template(P, "music", ("My favourite album is by {artist}; I also like {genre}",
                          "{artist} is my favourite artist, and I am into {genre} lately",
                          "Top artist: {artist}; favourite genre: {genre}"),
             "Who is my favourite artist?", ("music",)),
    Template(P, "books", ("I am reading {book} and want to finish it by {month}",
                          "Currently reading {book}, recommended by {name}",
                          "Halfway through {book}; goal is {month}"),
             "Which book am I reading?", ("books",)),
    Template(P, "books", ("{book} is the best book I read in {year}", "Book of {year}: {book}",
                          "In {year} nothing beat {book}, a gift from {name}"),
             "What was my favourite book of {year}?", ("books",)),
    Template(P, "shows", ("I am watching {show} with my {relative} on {weekday} evenings",
                          "{show} is our {weekday} night series, me and my {relative}",
                          "Watching {show} at the moment, season {count}"),
             "Which series am I watching?", ("tv",)),
    Template(P, "sports", ("I support {team} and never miss a game", "Big fan of {team} since {year}",
                           "I have a season ticket for {team}, seat on floor {floor}"),
             "Which team do I support?", ("sports",)),
    Template(E, "sports", ("Played {sport} with {name} at {place} on {weekday}",
                           "{sport} game with {name} on {weekday}, near {place}",
                           "Lost a {sport} match to {name} on {weekday}"),
             "When did I last play {sport}?", ("sports",)),
    # Pets and home.
    Template(F, "pets", ("My {pet} is called {pet_name} and is {count} years old",
                         "{pet_name} is my {count}-year-old {pet}", "We adopted {pet_name} the {pet} in {year}"),
             "What is my pet called?", ("pets",)),
    Template(E, "pets", ("Took {pet_name} the {pet} to the vet on {weekday}",
                         "Vet visit for {pet_name} ({pet}) on {weekday} at {time}",
                         "{pet_name} had a check-up at the vet this {weekday}"),
             "When did {pet_name} see the vet?", ("pets", "health")),
    Template(F, "home", ("My flat is on floor {floor}, door code changes every {month}",
                         "I live on floor {floor} of a building in {city}",
                         "Floor {floor}, no lift; the door code is new since {month}"),
             "Which floor do I live on?", ("home",)),
    Template(E, "home", ("Bought {vehicle} for {amount} euros in {month}",
                         "Paid {amount} euros for {vehicle} in {month}",
                         "New purchase in {month}: {vehicle}, {amount} euros"),
             "What did I buy in {month}?", ("shopping",)),
    Template(F, "home", ("I pay {amount} euros a month for rent in {city}", "Rent in {city}: {amount} euros monthly",
                         "My {city} flat costs {amount} euros a month"),
             "How much is my rent?", ("home", "finance")),
    # Tech and communication.
    Template(P, "tech", ("I use {device} and keep my notes in {app}", "Notes go into {app}, on my {device}",
                         "{app} on {device} is where I keep everything"),
             "Which note app do I use?", ("tech",)),
    Template(P, "communication", ("Please send reminders on {app} at {time}, not by email",
                                 "Reminders via {app} please, around {time}",
                                 "I only see {app} reminders; send them before {time} on {weekday}"),
             "How do I want to get reminders?", ("communication",)),
    Template(P, "communication", ("I prefer short answers in {language} when I am tired",
                                 "After {time} answer me briefly, in {language}",
                                 "Keep replies short and in {language} on {weekday}"),
             "Which language should replies be in?", ("communication", "language")),
    # Learning and goals.
    Template(F, "learning", ("I have been learning {language} for {count} months for a trip to {country}",
                             "Learning {language} ({count} months so far) before going to {country}",
                             "{count} months into {language} lessons, {country} here I come"),
             "Why am I learning {language}?", ("language", "learning")),
    Template(P, "goals", ("This year I want to {goal} and {goal}", "Goals for {year}: {goal}, {goal}",
                          "By {month} I want to {goal}; after that, {goal}"),
             "What are my goals this year?", ("goals",)),
    Template(E, "goals", ("Signed up to {goal} with {name} in {month} {year}",
                          "{name} and I decided in {month} {year} to {goal}",
                          "Promised {name} in {month} {year} that I will {goal}"),
             "What did I sign up for with {name}?", ("goals",)),
    # Events.
    Template(E, "events", ("Went to {place} in {city} with my {relative} {name}",
                           "Day out at {place}, {city}, with {name}, my {relative}",
                           "My {relative} {name} and I visited {place} in {city}"),
             "What did I do with {name} in {city}?", ("events", "family")),
    Template(E, "events", ("Celebrated {name}'s birthday at a {cuisine} restaurant in {city}",
                           "{name}'s birthday dinner: {cuisine} food in {city}",
                           "We took {name} out for {cuisine} in {city} for their birthday"),
             "Where did we celebrate {name}'s birthday?", ("events", "friends")),
    Template(E, "events", ("Have {event} in {city} on the {day} of {month}", "{event}, {city}, {month} {day}",
                           "On the {day} of {month} I have {event} in {city}"),
             "What is happening in {city}?", ("events", "schedule")),
    Template(E, "events", ("Met {name} for {drink} at {place} on {weekday}",
                           "{drink} with {name} at {place}, {weekday}",
                           "Caught up with {name} over {drink} near {place} on {weekday}"),
             "When did I last see {name}?", ("events", "friends")),
)  # fmt: skip

_FORMATTER = string.Formatter()


def _slots(template: str) -> list[str]:
    return [field for _, field, _, _ in _FORMATTER.parse(template) if field]


for _template in TEMPLATES:
    for _text in _template.texts:
        if set(_slots(_text)) - set(SLOTS) or not set(_slots(_template.question)) <= set(_slots(_text)):
            raise AssertionError(f"template {_text!r}: unknown slots, or not all of its question's")

KEYED = tuple(template for template in TEMPLATES if template.key is not None)
UNKEYED = tuple(template for template in TEMPLATES if template.key is None)


@dataclass(frozen=True)
class Statement:
    template: Template
    content: str
    question: str


def fill(template: Template, rng: random.Random) -> Statement:
    """One of the template's wordings with its slots drawn from rng. A slot
    named twice draws two different words (two goals); the question names the first."""
    values: dict[str, str] = {}
    parts: list[str] = []
    for literal, slot, _, _ in _FORMATTER.parse(rng.choice(template.texts)):
        parts.append(literal)
        if slot:
            word = rng.choice(SLOTS[slot])
            while slot in values and word == values[slot]:
                word = rng.choice(SLOTS[slot])
            values.setdefault(slot, word)
            parts.append(word)
    return Statement(template=template, content="".join(parts), question=template.question.format(**values))


def question(rng: random.Random) -> str:
    """A question a user might ask, from the same templates (with or without stored answer)."""
    return fill(rng.choice(TEMPLATES), rng).question
