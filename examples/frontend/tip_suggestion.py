"""Parallelism: fork the program, expand two tips at once, and summarize."""

from _backend import connect

from sglang import assistant, function, gen


@function
def tip_suggestion(s):
    s += assistant(
        "Here are two tips for staying healthy: "
        "1. Balanced Diet. 2. Regular Exercise.\n\n"
    )
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += assistant(
            f"Now, expand tip {i+1} into a paragraph:\n"
            + gen("detailed_tip", max_tokens=256, stop="\n\n")
        )
    s += assistant("Tip 1:" + forks[0]["detailed_tip"] + "\n")
    s += assistant("Tip 2:" + forks[1]["detailed_tip"] + "\n")
    s += assistant("In summary" + gen("summary"))


if __name__ == "__main__":
    connect()
    state = tip_suggestion.run()
    print(state.text())
