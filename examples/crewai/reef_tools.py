"""The example crew's tool: a plain function (its docstring and annotations are its schema)."""

import json

FACTS = {
    "anemone": "Anemones clone themselves and fight slow border wars with rival clones.",
    "sea star": "Sea stars digest prey outside their own bodies.",
}


def species_facts(species: str) -> str:
    """Facts about a tide-pool species."""
    return json.dumps({"species": species, "fact": FACTS.get(species.lower(), "unknown")})
