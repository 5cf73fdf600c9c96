/*
 * LED output layer, no external libraries.
 *
 * WS2812B: 800 kHz NRZ bit-banged on PORTD at 16 MHz, 20 cycles per bit (0: 6 cycles high,
 * 1: 12 cycles high). Interrupts are disabled only while one LED's 24 bits go out (30 us),
 * so the UART (two-byte hardware buffer, a byte every 87 us) never loses a byte and the
 * gap between LEDs stays far below the 50 us latch time.
 * APA102: hardware SPI at 8 MHz (MOSI D11, SCK D13), global brightness field fixed at 31.
 *
 * Strip order: row by row from row 0; with LED_SERPENTINE odd rows run from the last
 * column back to column 0.
 */
#include "led_driver.h"

#include <Arduino.h>
#include <avr/interrupt.h>
#include <avr/io.h>

#include "config.h"
#include "protocol.h"

#if LED_DRIVER == LED_DRIVER_WS2812

#if WS2812_PIN < 2 || WS2812_PIN > 7
#error "WS2812_PIN must be D2..D7 (PORTD, D0/D1 are the UART)"
#endif

static inline void ws2812_byte(uint8_t byte) {
    uint8_t bits = 8;
    asm volatile(
        "1: sbi %[port], %[pin]  \n\t"  // rise
        "nop                     \n\t"
        "nop                     \n\t"
        "nop                     \n\t"
        "sbrs %[byte], 7         \n\t"  // bit 1: skip the early fall
        "cbi %[port], %[pin]     \n\t"  // bit 0 falls after 6 cycles
        "lsl %[byte]             \n\t"
        "nop                     \n\t"
        "nop                     \n\t"
        "nop                     \n\t"
        "nop                     \n\t"
        "cbi %[port], %[pin]     \n\t"  // bit 1 falls after 12 cycles
        "nop                     \n\t"
        "nop                     \n\t"
        "nop                     \n\t"
        "dec %[bits]             \n\t"
        "brne 1b                 \n\t"
        : [byte] "+r"(byte), [bits] "+r"(bits)
        : [port] "I"(_SFR_IO_ADDR(PORTD)), [pin] "I"(WS2812_PIN));
}

static inline void send_led(const uint8_t rgb[3]) {
    uint8_t sreg = SREG;
    cli();
    ws2812_byte(rgb[1]);  // WS2812B colour order is G, R, B
    ws2812_byte(rgb[0]);
    ws2812_byte(rgb[2]);
    SREG = sreg;
}

void led_driver_begin(void) {
    PORTD &= (uint8_t)~(1 << WS2812_PIN);
    DDRD |= (uint8_t)(1 << WS2812_PIN);
}

static inline void end_frame(void) { delayMicroseconds(60); }  // low > 50 us latches

#elif LED_DRIVER == LED_DRIVER_APA102

static inline void spi_byte(uint8_t value) {
    SPDR = value;
    while (!(SPSR & (1 << SPIF))) {
    }
}

static inline void send_led(const uint8_t rgb[3]) {
    spi_byte(0xE0 | 31);
    spi_byte(rgb[2]);  // APA102 colour order is B, G, R
    spi_byte(rgb[1]);
    spi_byte(rgb[0]);
}

void led_driver_begin(void) {
    DDRB |= (1 << PB2) | (1 << PB3) | (1 << PB5);  // SS must be an output for SPI master
    SPCR = (1 << SPE) | (1 << MSTR);
    SPSR = (1 << SPI2X);  // f_cpu / 2 = 8 MHz
}

static inline void start_frame(void) {
    for (uint8_t i = 0; i < 4; ++i) spi_byte(0x00);
}

static inline void end_frame(void) {
    // One clock edge per two LEDs is needed to push data through the chain.
    for (uint16_t i = 0; i < LED_COUNT / 16 + 1; ++i) spi_byte(0xFF);
}

#else
#error "LED_DRIVER must be LED_DRIVER_WS2812 (1) or LED_DRIVER_APA102 (2)"
#endif

void led_driver_show(void) {
    static const uint8_t black[3] = {0, 0, 0};
    uint8_t rgb[3];
    protocol_output_rgb(rgb);
#if LED_DRIVER == LED_DRIVER_APA102
    start_frame();
#endif
    for (uint8_t row = 0; row < LED_ROWS; ++row) {
        uint8_t reversed = LED_SERPENTINE && (row & 1);
        uint16_t base = (uint16_t)row * LED_COLS;
        for (uint8_t step = 0; step < LED_COLS; ++step) {
            uint8_t col = reversed ? (uint8_t)(LED_COLS - 1 - step) : step;
            send_led(protocol_led_lit(base + col) ? rgb : black);
        }
    }
    end_frame();
}
