"""GLOWDeblur web app (placeholder until the pipeline lands)."""
import gradio as gr

with gr.Blocks(title="GLOWDeblur") as demo:
    gr.Markdown("# GLOWDeblur\nNo model yet: the pipeline is being built.")

if __name__ == "__main__":
    demo.launch()
