"""Writes train.jsonl and test.jsonl: short chat records in four skills (see README.md).

Run from this directory with any Python 3: `python make.py`. Deterministic; every fifth item of each
skill goes to the held-out test set, so the test words, countries and nouns never appear in training.
"""

import json

PAST = """arise arose|awake awoke|bear bore|beat beat|become became|begin began|bend bent|bet bet|bind bound
bite bit|bleed bled|blow blew|break broke|breed bred|bring brought|build built|burst burst|buy bought
catch caught|choose chose|cling clung|come came|cost cost|creep crept|cut cut|deal dealt|dig dug|do did
draw drew|drink drank|drive drove|eat ate|fall fell|feed fed|feel felt|fight fought|find found|flee fled
fling flung|fly flew|forbid forbade|forget forgot|forgive forgave|freeze froze|get got|give gave|go went
grind ground|grow grew|hang hung|have had|hear heard|hide hid|hit hit|hold held|hurt hurt|keep kept
kneel knelt|know knew|lay laid|lead led|leave left|lend lent|let let|lie lay|light lit|lose lost
make made|mean meant|meet met|pay paid|put put|quit quit|read read|ride rode|ring rang|rise rose|run ran
say said|see saw|seek sought|sell sold|send sent|set set|shake shook|shine shone|shoot shot|shrink shrank
shut shut|sing sang|sink sank|sit sat|sleep slept|slide slid|speak spoke|spend spent|spin spun|spit spat
split split|spread spread|spring sprang|stand stood|steal stole|stick stuck|sting stung|stink stank
strike struck|string strung|strive strove|swear swore|sweep swept|swim swam|swing swung|take took
teach taught|tear tore|tell told|think thought|throw threw|tread trod|wake woke|wear wore|weave wove
weep wept|win won|wind wound|wring wrung|write wrote"""

OPPOSITE = """hot cold|big small|fast slow|happy sad|early late|light dark|open closed|full empty|hard soft
high low|long short|old young|rich poor|strong weak|wet dry|thick thin|heavy light|loud quiet|clean dirty
cheap expensive|deep shallow|easy difficult|first last|friend enemy|inside outside|true false|win lose
buy sell|push pull|above below|arrive depart|begin end|brave cowardly|calm anxious|alive dead|accept refuse
add subtract|ancient modern|asleep awake|broad narrow|bottom top|borrow lend|day night|entrance exit
fail succeed|forward backward|giant dwarf|guilty innocent|horizontal vertical|increase decrease
left right|major minor|maximum minimum|noisy silent|north south|east west|question answer|remember forget
rough smooth|sharp blunt|sunrise sunset|tame wild|tight loose|victory defeat|visible invisible
wide narrow|winter summer|wise foolish|absent present|public private|sweet sour|polite rude|shut open"""

CAPITAL = """France Paris|Germany Berlin|Italy Rome|Spain Madrid|Portugal Lisbon|Japan Tokyo|China Beijing
India New Delhi|Kenya Nairobi|Egypt Cairo|Peru Lima|Chile Santiago|Argentina Buenos Aires|Brazil Brasília
Canada Ottawa|Mexico Mexico City|Australia Canberra|Russia Moscow|Norway Oslo|Sweden Stockholm
Finland Helsinki|Denmark Copenhagen|Poland Warsaw|Austria Vienna|Greece Athens|Turkey Ankara|Iran Tehran
Iraq Baghdad|Thailand Bangkok|Vietnam Hanoi|Indonesia Jakarta|Philippines Manila|South Korea Seoul
Ireland Dublin|Hungary Budapest|Czechia Prague|Belgium Brussels|Netherlands Amsterdam|Switzerland Bern
Morocco Rabat|Nigeria Abuja|Ghana Accra|Ethiopia Addis Ababa|Colombia Bogotá|Venezuela Caracas
Cuba Havana|Ukraine Kyiv|Romania Bucharest|Bulgaria Sofia|Serbia Belgrade|Croatia Zagreb|Iceland Reykjavík
Pakistan Islamabad|Bangladesh Dhaka|Nepal Kathmandu|Afghanistan Kabul|Saudi Arabia Riyadh|Qatar Doha
Israel Jerusalem|Lebanon Beirut|Syria Damascus|Jordan Amman|Tunisia Tunis|Algeria Algiers|Senegal Dakar
Uganda Kampala|Tanzania Dodoma|Zimbabwe Harare|Zambia Lusaka|Angola Luanda|Mongolia Ulaanbaatar
New Zealand Wellington|Malaysia Kuala Lumpur|Singapore Singapore|Uruguay Montevideo|Paraguay Asunción
Bolivia Sucre|Ecuador Quito|Estonia Tallinn|Latvia Riga|Lithuania Vilnius|Slovakia Bratislava"""

PLURAL = """mouse mice|child children|man men|woman women|tooth teeth|foot feet|goose geese|person people
ox oxen|cactus cacti|fungus fungi|nucleus nuclei|radius radii|crisis crises|thesis theses|analysis analyses
phenomenon phenomena|criterion criteria|knife knives|wife wives|leaf leaves|wolf wolves|half halves
life lives|loaf loaves|shelf shelves|thief thieves|calf calves|potato potatoes|tomato tomatoes|hero heroes
echo echoes|city cities|baby babies|lady ladies|story stories|box boxes|church churches|bus buses
sheep sheep|deer deer|fish fish|series series|species species|index indices|appendix appendices"""


def pairs(table):
    out = []
    for item in table.replace("\n", "|").split("|"):
        words = item.split()
        # A capital may have several words: the country is the first word unless the table says
        # otherwise with a known two-word country.
        out.append(words)
    return out


TWO_WORD_COUNTRIES = {"South Korea", "Saudi Arabia", "New Zealand"}


def split_country(words):
    if " ".join(words[:2]) in TWO_WORD_COUNTRIES:
        return " ".join(words[:2]), " ".join(words[2:])
    return words[0], " ".join(words[1:])


def chat(user, assistant, skill):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}], "skill": skill}


def records():
    skills = {"past": [], "opposite": [], "capital": [], "plural": []}
    for verb, past in pairs(PAST):
        skills["past"].append(chat(f'What is the past tense of "{verb}"?', f'The past tense of "{verb}" is "{past}".', "past"))
    for a, b in pairs(OPPOSITE):
        skills["opposite"].append(chat(f'What is the opposite of "{a}"?', f'The opposite of "{a}" is "{b}".', "opposite"))
    for words in pairs(CAPITAL):
        country, city = split_country(words)
        skills["capital"].append(chat(f"What is the capital of {country}?", f"The capital of {country} is {city}.", "capital"))
    for noun, plural in pairs(PLURAL):
        skills["plural"].append(chat(f'What is the plural of "{noun}"?', f'The plural of "{noun}" is "{plural}".', "plural"))
    return skills


def main():
    train, test = [], []
    for items in records().values():
        for i, r in enumerate(items):
            (test if i % 5 == 4 else train).append(r)
    for name, rows in [("train.jsonl", train), ("test.jsonl", test)]:
        with open(name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(name, len(rows))


if __name__ == "__main__":
    main()
