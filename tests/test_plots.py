"""Study figures: intervals drawn, accuracy axes fixed to [0, 1], floors shown."""

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from mibench_lib import plots


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _rows():
    rows = []
    for attack, base in (("gmi", 0.5), ("brep_mi", 0.2)):
        for x in (0.6, 0.9):
            for seed in range(3):
                rows.append(
                    {
                        "attack": attack,
                        "x": x,
                        "seed": seed,
                        "acc1": 0.2 + 0.001 * seed,  # a flat line must look flat
                        "delta_eval": base * 100 + seed,
                        "natural_acc": x,
                        "defense": "mid",
                        "defense_label": f"mid {x}",
                        "n_images": 25,
                    }
                )
    return pd.DataFrame(rows)


def test_trend_has_error_bars_and_a_fixed_accuracy_axis():
    ax = plots.plot_trend(_rows(), x="x", y="acc1", floors={"blank image": 0.2})
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))
    assert len(ax.containers) == 2  # one errorbar container per attack
    assert any(t.get_text() == "blank image" for t in ax.texts)
    ax2 = plots.plot_trend(_rows(), x="x", y="delta_eval")
    assert ax2.get_ylim()[1] < 100  # non-accuracy axes follow the data


def test_privacy_utility_curves():
    ax = plots.plot_privacy_utility(_rows(), attack="gmi", curve="defense")
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))
    (container,) = ax.containers
    assert len(container.lines[0].get_xdata()) == 2  # two knob values joined into one curve


def test_a_defense_keeps_its_colour_across_attack_panels():
    df = _rows()
    df.loc[df["attack"] == "brep_mi", "defense"] = "other"  # a curve only one panel has
    extra = df[df["attack"] == "gmi"].assign(attack="brep_mi")  # mid in the second panel too
    df = pd.concat([df, extra])
    _, (a, b) = plt.subplots(1, 2)
    plots.plot_privacy_utility(df, attack="gmi", ax=a)
    plots.plot_privacy_utility(df, attack="brep_mi", ax=b)

    def colour_of(ax, label):
        handles, labels = ax.get_legend_handles_labels()
        return handles[labels.index(label)].lines[0].get_color()

    assert colour_of(a, "mid") == colour_of(b, "mid")
    assert colour_of(b, "other") != colour_of(b, "mid")


def test_attack_plane_places_each_attack_once_with_both_intervals():
    df = _rows().assign(family=lambda d: d["attack"].map({"gmi": "white-box", "brep_mi": "label"}))
    ax = plots.plot_attack_plane(df, x="delta_eval", y="acc1", floors={"blank image": 0.1})
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))
    assert len(ax.containers) == 2  # one point per attack, each with x and y error bars
    for container in ax.containers:
        assert container.has_xerr and container.has_yerr
    means = sorted(float(c.lines[0].get_xdata()[0]) for c in ax.containers)
    assert means == pytest.approx([21.0, 51.0])  # mean delta_eval over seeds and x values
    assert {t.get_text() for t in ax.texts} >= {"gmi", "brep_mi", "blank image"}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["label", "white-box"]


def test_per_class_heat_map_shows_the_mean_over_seeds():
    tidy = pd.DataFrame(
        {
            "attack": ["gmi"] * 4,
            "seed": [0, 1, 0, 1],
            "class": [0, 0, 1, 1],
            "acc1": [1.0, 0.5, 0.0, 0.0],
        }
    )
    ax = plots.plot_per_class(tidy, class_names=["zero", "one"])
    assert [t.get_text() for t in ax.texts] == ["0.75", "0.00"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["zero", "one"]
