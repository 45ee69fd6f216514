"""Checks shared by the figure tests: every panel labelled, finite data, no "?" in
titles, and a legend that covers no plotted point."""

import numpy as np


def lines_labelled(ax, text):
    return [line for line in ax.get_lines() if text in str(line.get_label())]


def data_points(ax):
    """Display coordinates of every plotted vertex of ``ax``: line vertices and scatter offsets."""
    points = [line.get_transform().transform(np.column_stack([line.get_xdata(), line.get_ydata()]).astype(float))
              for line in ax.get_lines() if len(line.get_xdata())]
    points += [c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections if len(c.get_offsets())]
    return np.concatenate(points) if points else np.zeros((0, 2))


def check_panels(fig):
    """Every visible panel has both axes labelled (a twin's hidden x axis excepted) and only
    finite data; no title asks "?"; the figure has a legend and none covers a plotted point."""
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert panels
    for ax in panels:
        assert ax.get_ylabel().strip(), ax.get_title()
        assert ax.get_xlabel().strip() or not ax.xaxis.get_visible(), ax.get_title()
        assert "?" not in ax.get_title()
        for line in ax.get_lines():
            assert np.isfinite(np.asarray(line.get_xdata(), dtype=float)).all()
            assert np.isfinite(np.asarray(line.get_ydata(), dtype=float)).all()
        for c in ax.collections:
            assert np.isfinite(np.asarray(c.get_offsets(), dtype=float)).all()
            assert all(np.isfinite(path.vertices).all() for path in c.get_paths())
        assert np.isfinite(ax.get_xlim()).all() and np.isfinite(ax.get_ylim()).all()
    assert "?" not in fig.get_suptitle()
    legends = list(fig.legends) + [ax.get_legend() for ax in panels if ax.get_legend() is not None]
    assert legends
    fig.canvas.draw()
    for legend in legends:
        box = legend.get_window_extent()
        for ax in panels:
            xy, frame = data_points(ax), ax.bbox  # points clipped outside the frame are not drawn
            shown = (xy[:, 0] >= frame.x0) & (xy[:, 0] <= frame.x1) & (xy[:, 1] >= frame.y0) & (xy[:, 1] <= frame.y1)
            inside = shown & (xy[:, 0] > box.x0) & (xy[:, 0] < box.x1) & (xy[:, 1] > box.y0) & (xy[:, 1] < box.y1)
            assert not inside.any(), f"the legend covers {int(inside.sum())} plotted points of {ax.get_title()!r}"
